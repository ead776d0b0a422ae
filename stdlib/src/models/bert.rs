//! `arch = "bert"`: a BERT encoder (all-MiniLM-L6-v2) giving sentence embeddings: the mean of
//! the last layer over the text's tokens, L2-normalized (SPEC §4.9). Weights are a safetensors
//! file with Hugging Face names; `config.json` and `tokenizer.json` lie beside it (as the store
//! keeps them).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Result, Tensor, D};
use mars_runtime::{Item, Node, NodeContext, NodeError, Outputs, TensorData, Value};
use tokenizers::Tokenizer;

use super::ModelConfig;

#[derive(Debug, Clone, serde::Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    layer_norm_eps: f64,
    max_position_embeddings: usize,
}

struct Dense {
    /// `[in, out]`.
    w: Tensor,
    b: Tensor,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.w)?.broadcast_add(&self.b)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.w)?
            .broadcast_add(&self.b)
    }
}

struct Layer {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    ln1: Norm,
    up: Dense,
    down: Dense,
    ln2: Norm,
}

fn take(
    t: &mut HashMap<String, Tensor>,
    file: &str,
    n: &str,
) -> std::result::Result<Tensor, String> {
    t.remove(n)
        .ok_or_else(|| format!("{file}: no tensor `{n}`"))
}

fn dense(
    t: &mut HashMap<String, Tensor>,
    file: &str,
    p: &str,
) -> std::result::Result<Dense, String> {
    let w = take(t, file, &format!("{p}.weight"))?;
    let w = w
        .t()
        .and_then(|w| w.contiguous())
        .map_err(|e| e.to_string())?;
    Ok(Dense {
        w,
        b: take(t, file, &format!("{p}.bias"))?,
    })
}

fn norm(
    t: &mut HashMap<String, Tensor>,
    file: &str,
    p: &str,
    eps: f64,
) -> std::result::Result<Norm, String> {
    Ok(Norm {
        w: take(t, file, &format!("{p}.weight"))?,
        b: take(t, file, &format!("{p}.bias"))?,
        eps,
    })
}

/// A loaded sentence encoder.
pub struct Bert {
    config: BertConfig,
    tokenizer: Tokenizer,
    word: Tensor,
    pos: Tensor,
    typ: Tensor,
    ln: Norm,
    layers: Vec<Layer>,
    max_tokens: usize,
}

impl Bert {
    /// Load `weights` (safetensors) with `config.json` and `tokenizer.json` from its folder.
    pub fn load(weights: &Path, max_tokens: usize) -> std::result::Result<Bert, String> {
        let dir = weights.parent().unwrap_or(Path::new("."));
        let cfg_path = dir.join("config.json");
        let config: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path)
                .map_err(|e| format!("cannot read {}: {e}", cfg_path.display()))?,
        )
        .map_err(|e| format!("{}: {e}", cfg_path.display()))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| format!("{}: {e}", tok_path.display()))?;
        let bytes = std::fs::read(weights)
            .map_err(|e| format!("cannot read {}: {e}", weights.display()))?;
        let mut t: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
                .map_err(|e| format!("{}: {e}", weights.display()))?;
        let shown = weights.display().to_string();
        let eps = config.layer_norm_eps;
        let ln = norm(&mut t, &shown, "embeddings.LayerNorm", eps)?;
        let mut layers = Vec::new();
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let mut d = |n: &str| dense(&mut t, &shown, &format!("{p}.{n}"));
            let (q, k, v, o) = (
                d("attention.self.query")?,
                d("attention.self.key")?,
                d("attention.self.value")?,
                d("attention.output.dense")?,
            );
            let (up, down) = (d("intermediate.dense")?, d("output.dense")?);
            layers.push(Layer {
                q,
                k,
                v,
                o,
                up,
                down,
                ln1: norm(
                    &mut t,
                    &shown,
                    &format!("{p}.attention.output.LayerNorm"),
                    eps,
                )?,
                ln2: norm(&mut t, &shown, &format!("{p}.output.LayerNorm"), eps)?,
            });
        }
        let mut take = |n: &str| take(&mut t, &shown, n);
        let word = take("embeddings.word_embeddings.weight")?;
        let pos = take("embeddings.position_embeddings.weight")?;
        let typ = take("embeddings.token_type_embeddings.weight")?;
        Ok(Bert {
            max_tokens: max_tokens.min(config.max_position_embeddings),
            config,
            tokenizer,
            word,
            pos,
            typ,
            ln,
            layers,
        })
    }

    /// The width of an embedding.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// One text's embedding: mean over its tokens (with `[CLS]` and `[SEP]`), L2-normalized.
    pub fn embed(&self, text: &str) -> std::result::Result<Vec<f32>, String> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| format!("tokenizing failed: {e}"))?;
        // The file's tokenizer pads to a fixed length: keep the attended tokens only.
        let mut ids: Vec<u32> = enc
            .get_ids()
            .iter()
            .zip(enc.get_attention_mask())
            .filter(|(_, &m)| m == 1)
            .map(|(&i, _)| i)
            .collect();
        if ids.len() > self.max_tokens {
            let last = *ids.last().unwrap_or(&0);
            ids.truncate(self.max_tokens);
            if let Some(l) = ids.last_mut() {
                *l = last;
            }
        }
        self.forward(&ids)
            .map_err(|e| format!("bert forward failed: {e}"))
    }

    fn forward(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let n = ids.len();
        let (d, h) = (self.config.hidden_size, self.config.num_attention_heads);
        let hd = d / h;
        let dev = &Device::Cpu;
        let idx = Tensor::from_vec(ids.to_vec(), n, dev)?;
        let x = (self.word.index_select(&idx, 0)? + self.pos.narrow(0, 0, n)?)?
            .broadcast_add(&self.typ.get(0)?)?;
        let mut x = self.ln.forward(&x)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let heads = |t: Tensor| -> Result<Tensor> {
                t.reshape((n, h, hd))?.transpose(0, 1)?.contiguous()
            };
            let q = heads(l.q.forward(&x)?)?;
            let k = heads(l.k.forward(&x)?)?;
            let v = heads(l.v.forward(&x)?)?;
            let att = (q.matmul(&k.t()?)? * scale)?;
            let m = att.max_keepdim(D::Minus1)?;
            let ex = att.broadcast_sub(&m)?.exp()?;
            let p = ex.broadcast_div(&ex.sum_keepdim(D::Minus1)?)?;
            let y = p.matmul(&v)?.transpose(0, 1)?.reshape((n, d))?;
            x = l.ln1.forward(&(x + l.o.forward(&y)?)?)?;
            let f = l.down.forward(&l.up.forward(&x)?.gelu_erf()?)?;
            x = l.ln2.forward(&(x + f)?)?;
        }
        let mean = x.mean(0)?;
        let norm = mean
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()?
            .max(1e-12);
        Ok(mean
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| v / norm)
            .collect())
    }
}

/// The `bert` node: a text in, its embedding (`Tensor<f32, [dim]>`) out.
pub struct BertNode {
    bert: Arc<Bert>,
}

impl BertNode {
    pub fn from_ctx(ctx: &NodeContext) -> std::result::Result<BertNode, NodeError> {
        let cfg = ModelConfig::of(ctx)?;
        let max = cfg.int("max_tokens", 256)?;
        if max < 2 {
            return Err(cfg.err("max_tokens", "must be at least 2"));
        }
        let opened = crate::store::open_weights(&ctx.node, &ctx.base_dir)
            .map_err(|e| NodeError::new(e.0))?;
        let bert = Bert::load(&opened.path, max as usize)
            .map_err(|e| NodeError::new(format!("node `{}`: {e}", ctx.node.id)))?;
        Ok(BertNode {
            bert: Arc::new(bert),
        })
    }
}

/// An embedding as a runtime value.
pub fn embedding_value(v: Vec<f32>) -> Value {
    Value::Tensor(Arc::new(TensorData {
        dtype: "f32".into(),
        shape: vec![v.len()],
        data: v,
    }))
}

impl Node for BertNode {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<std::result::Result<Outputs, NodeError>> {
        batch
            .into_iter()
            .map(|item| {
                let text = item
                    .first()
                    .ok_or_else(|| NodeError::new("bert: no text input"))?
                    .as_text()?;
                let v = self.bert.embed(text).map_err(NodeError::new)?;
                Ok(vec![embedding_value(v)])
            })
            .collect()
    }
}
