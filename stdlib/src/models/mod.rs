//! `std.models` implementations: model architectures on candle (CPU), their weights files and
//! the tiny translator's training.
//!
//! Weights are safetensors files whose metadata carries `mars.arch`, `mars.config` (the
//! architecture's shapes as JSON) and, for text models, `tokenizer` (see [`tokenizer`]). A
//! model block's `quantize` key maps onto candle's quantized matmul (see [`linear`]).

pub mod bert;
pub mod chat;
pub mod compress;
pub mod gemma3;
pub mod gguf;
pub mod kv;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod llm_eval;
pub mod llm_prune;
pub mod llm_quant;
pub mod numbers;
pub mod onnx;
pub mod onnx_plans;
pub mod onnx_shapes;
pub mod qlinear;
pub mod quant;
pub mod spm;
pub mod tokenizer;
pub mod train;
pub mod transformer_lm;
pub mod vision;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use mars_runtime::{
    Generate, Item, Node, NodeContext, NodeError, Outputs, Registry, SeqId, Step, Value,
};

use linear::Quantize;
use tokenizer::Tokenizer;
use transformer_lm::{
    choose_next, generate, generate_padded, prompt_tokens, LmConfig, Sampling, SeqState, SplitMix,
    TransformerLm,
};

/// Register this module's architectures (`transformer_lm`, `unet_tiny`, `crnn_tiny`).
/// Fix `RAYON_NUM_THREADS` to the thread count candle would choose, unless it is set. candle
/// asks for its count on every matmul, and without the variable that reads `/proc/cpuinfo`
/// each time (`num_cpus::get_physical`: 5% of a SmolLM2 decode step here). The rayon pool the
/// quantized kernels use then has as many threads as candle's matmuls. Call it first thing in
/// `main`, before any thread starts (setting a variable races with threads reading them).
pub fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

pub fn register(registry: &mut Registry) {
    registry.model(
        "unet_tiny",
        Arc::new(|ctx: &NodeContext| {
            Ok(Box::new(VisionNode::from_ctx(ctx, Vision::Unet)?) as Box<dyn Node>)
        }),
    );
    registry.model(
        "crnn_tiny",
        Arc::new(|ctx: &NodeContext| {
            Ok(Box::new(VisionNode::from_ctx(ctx, Vision::Crnn)?) as Box<dyn Node>)
        }),
    );
    registry.model(
        "bert",
        Arc::new(|ctx: &NodeContext| Ok(Box::new(bert::BertNode::from_ctx(ctx)?) as Box<dyn Node>)),
    );
    registry.model(
        "onnx",
        Arc::new(|ctx: &NodeContext| Ok(Box::new(onnx::OnnxNode::from_ctx(ctx)?) as Box<dyn Node>)),
    );
    registry.model(
        "llama",
        Arc::new(|ctx: &NodeContext| Ok(Box::new(chat::ChatNode::from_ctx(ctx)?) as Box<dyn Node>)),
    );
    registry.model(
        "gemma3",
        Arc::new(|ctx: &NodeContext| Ok(Box::new(chat::ChatNode::from_ctx(ctx)?) as Box<dyn Node>)),
    );
    registry.model(
        "transformer_lm",
        Arc::new(|ctx: &NodeContext| Ok(Box::new(LmNode::from_ctx(ctx)?) as Box<dyn Node>)),
    );
}

/// A `transformer_lm` that runs classic static batching (see
/// [`transformer_lm::generate_padded`]): every sequence of a batch is decoded at every step
/// until the longest finishes. Not registered by [`register`]: the baseline of
/// `marsc bench continuous`, which registers it under an architecture name of its own.
pub fn padded_lm_factory() -> mars_runtime::NodeFactory {
    Arc::new(|ctx: &NodeContext| {
        let mut node = LmNode::from_ctx(ctx)?;
        node.padded = true;
        Ok(Box::new(node) as Box<dyn Node>)
    })
}

/// Write tensors and string metadata as a safetensors file, byte-for-byte reproducible: the
/// `safetensors` crate writes its metadata map in hash order, so the header is rewritten with
/// sorted keys (same length class, padded with spaces to 8 bytes as the format allows).
pub fn save_safetensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> candle_core::Result<()> {
    let sorted: BTreeMap<&String, &Tensor> = tensors.iter().collect();
    let bytes = safetensors::serialize(sorted, Some(metadata)).map_err(candle_core::Error::wrap)?;
    let n = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| candle_core::Error::msg("safetensors output has no header"))?
        as usize;
    // serde_json's map is ordered by key, so re-serializing sorts the header.
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(candle_core::Error::wrap)?;
    let mut text = serde_json::to_vec(&header).map_err(candle_core::Error::wrap)?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).map_err(candle_core::Error::wrap)
}

/// A loaded weights file: its tensors and metadata.
pub struct Weights {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
    /// The file it was read from (for errors).
    pub path: std::path::PathBuf,
}

/// Read a safetensors file with its metadata; errors name the file.
pub fn load_safetensors(path: &Path) -> Result<Weights, String> {
    // A regular file only (not /dev/zero, not a FIFO), at most 64 GiB (SPEC 7.3).
    let bytes = mars_runtime::files::read_regular(path, 64 << 30)
        .map_err(|e| format!("cannot read weights `{}`: {e}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        format!(
            "weights `{}` are not a safetensors file: {e}",
            path.display()
        )
    })?;
    let metadata = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| format!("weights `{}`: {e}", path.display()))?;
    Ok(Weights {
        tensors,
        metadata,
        path: path.to_path_buf(),
    })
}

/// The file a model node's `weights` key names, through the model store for `model:NAME`
/// (checked against the hashes the plan recorded; see [`crate::store::open_weights`]).
pub fn weights_path(ctx: &NodeContext) -> Result<std::path::PathBuf, NodeError> {
    crate::store::open_weights(&ctx.node, &ctx.base_dir)
        .map(|w| w.path)
        .map_err(|e| NodeError::new(e.0))
}

/// A weights reference: `model:NAME` (or `model:NAME/FILE`) in the model store, or a path
/// relative to `base` (the plan's folder). A stored model not pulled yet is an error naming
/// the command that pulls it.
pub fn model_file(reference: &str, base: &Path) -> Result<std::path::PathBuf, String> {
    if reference.starts_with("model:") {
        let store = crate::store::Store::from_env().map_err(|e| e.0)?;
        Ok(store.resolve(reference).map_err(|e| e.0)?.path)
    } else {
        Ok(base.join(reference))
    }
}

/// A model node's config keys, with errors that name the node and key.
struct ModelConfig<'a> {
    node: &'a str,
    keys: &'a BTreeMap<String, serde_json::Value>,
}

impl<'a> ModelConfig<'a> {
    fn of(ctx: &'a NodeContext) -> Result<ModelConfig<'a>, NodeError> {
        let model = ctx
            .node
            .implementation
            .model
            .as_ref()
            .ok_or_else(|| NodeError::new(format!("node `{}` is not a model", ctx.node.id)))?;
        Ok(ModelConfig {
            node: &ctx.node.id,
            keys: &model.config,
        })
    }

    fn err(&self, key: &str, msg: &str) -> NodeError {
        NodeError::new(format!("node `{}`: model key `{key}` {msg}", self.node))
    }

    fn text(&self, key: &str) -> Result<Option<&'a str>, NodeError> {
        match self.keys.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, &format!("must be text, got `{v}`"))),
        }
    }

    fn int(&self, key: &str, default: i64) -> Result<i64, NodeError> {
        match self.keys.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| self.err(key, &format!("must be an integer, got `{v}`"))),
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64, NodeError> {
        match self.keys.get(key) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(key, &format!("must be a number, got `{v}`"))),
        }
    }

    fn quantize(&self) -> Result<Quantize, NodeError> {
        Quantize::parse(self.text("quantize")?.unwrap_or("none"))
            .map_err(|e| self.err("quantize", &format!(": {e}")))
    }

    /// Weights file, resolved against the plan's folder.
    fn weights(&self, base: &Path) -> Result<Weights, NodeError> {
        let rel = self
            .text("weights")?
            .ok_or_else(|| self.err("weights", "is missing"))?;
        load_safetensors(&base.join(rel))
            .map_err(|e| NodeError::new(format!("node `{}`: {e}", self.node)))
    }

    /// A `from weights` key: when the model block sets it, it must match the file.
    fn check_matches(&self, key: &str, actual: usize) -> Result<(), NodeError> {
        match self.keys.get(key) {
            None | Some(serde_json::Value::Null) => Ok(()),
            Some(v) if v.as_u64() == Some(actual as u64) => Ok(()),
            Some(v) => Err(self.err(key, &format!("is {v}, but the weights file has {actual}"))),
        }
    }
}

/// Load a `transformer_lm` from a weights file (shapes and tokenizer from its metadata).
pub fn load_lm(
    path: &Path,
    q: Quantize,
) -> Result<(TransformerLm, Tokenizer, BTreeMap<String, String>), String> {
    let w = load_safetensors(path)?;
    lm_from_weights(&w, q).map(|(m, t)| (m, t, w.metadata))
}

fn lm_from_weights(w: &Weights, q: Quantize) -> Result<(TransformerLm, Tokenizer), String> {
    let meta = |k: &str| {
        w.metadata
            .get(k)
            .ok_or_else(|| format!("the weights' metadata has no `{k}`"))
    };
    let arch = meta("mars.arch")?;
    if arch != "transformer_lm" {
        return Err(format!(
            "the weights are for `{arch}`, not `transformer_lm`"
        ));
    }
    let config: LmConfig = serde_json::from_str(meta("mars.config")?)
        .map_err(|e| format!("metadata `mars.config`: {e}"))?;
    let tok: Tokenizer = serde_json::from_str(meta("tokenizer")?)
        .map_err(|e| format!("metadata `tokenizer`: {e}"))?;
    if tok.vocab_size() != config.vocab_size {
        return Err(format!(
            "the tokenizer has {} tokens but the config says vocab_size {}",
            tok.vocab_size(),
            config.vocab_size
        ));
    }
    if q.needs_stats() {
        if let Some(layer) = quant::missing_stats(&w.tensors, &config) {
            return Err(format!(
                "quantize = {} needs calibration statistics, but `{}` has none for layer \
                 `{layer}`; add them with `marsc weights calibrate --weights {1} -o {1}`",
                q.name(),
                w.path.display()
            ));
        }
    }
    let model = TransformerLm::from_tensors(config, &w.tensors, q)?;
    Ok((model, tok))
}

/// The `transformer_lm` node: input 0 is the prompt text; an optional input 1 is a language
/// code, checked against the weights' `mars.languages` list. Output: the generated text.
///
/// It runs whole batches (`run_batch`, through [`generate`]) and, for the continuous-batching
/// scheduler, sequence by sequence through [`Generate`]; both pick tokens with
/// [`choose_next`] and a per-item generator seeded alike, so they give the same results.
struct LmNode {
    model: TransformerLm,
    tok: Tokenizer,
    max_tokens: usize,
    sampling: Sampling,
    languages: Option<Vec<String>>,
    /// The `kv_tokens` key (0: unset, the scheduler derives its bound).
    kv_tokens: usize,
    /// Sequences admitted through [`Generate`] and not yet done.
    seqs: BTreeMap<SeqId, Sequence>,
    /// `run_batch` decodes finished rows too (static batching; benchmarks only), and the node
    /// offers no step-level interface.
    padded: bool,
}

/// A sequence under the step-level interface.
struct Sequence {
    prompt_len: usize,
    /// Prompt plus generated tokens, while the sequence has no cache (admitted or preempted).
    tokens: Vec<u32>,
    /// Its own sampling generator; kept across preemption so samples do not change.
    rng: SplitMix,
    /// Its tokens, caches and next-token logits, once prefilled.
    state: Option<SeqState>,
}

impl LmNode {
    fn from_ctx(ctx: &NodeContext) -> Result<LmNode, NodeError> {
        let cfg = ModelConfig::of(ctx)?;
        let q = cfg.quantize()?;
        let weights = cfg.weights(&ctx.base_dir)?;
        let (model, tok) = lm_from_weights(&weights, q)
            .map_err(|e| NodeError::new(format!("node `{}`: {e}", ctx.node.id)))?;
        cfg.check_matches("d_model", model.config.d_model)?;
        cfg.check_matches("n_layers", model.config.n_layers)?;
        cfg.check_matches("n_heads", model.config.n_heads)?;
        cfg.check_matches("vocab_size", model.config.vocab_size)?;
        let max_tokens = cfg.int("max_tokens", 64)?;
        if max_tokens < 1 {
            return Err(cfg.err("max_tokens", "must be at least 1"));
        }
        let top_k = cfg.int("top_k", 0)?;
        let top_p = cfg.float("top_p", 1.0)?;
        let temperature = cfg.float("temperature", 0.0)?;
        if top_k < 0 {
            return Err(cfg.err("top_k", "must be non-negative"));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(cfg.err("top_p", "must be in (0, 1]"));
        }
        if temperature < 0.0 {
            return Err(cfg.err("temperature", "must be non-negative"));
        }
        let languages = match weights.metadata.get("mars.languages") {
            None => None,
            Some(s) => Some(serde_json::from_str(s).map_err(|e| {
                NodeError::new(format!(
                    "node `{}`: metadata `mars.languages`: {e}",
                    ctx.node.id
                ))
            })?),
        };
        let kv_tokens = cfg.int("kv_tokens", 0)?;
        if kv_tokens < 0 {
            return Err(cfg.err("kv_tokens", "must be non-negative (0: derived)"));
        }
        Ok(LmNode {
            model,
            tok,
            kv_tokens: kv_tokens as usize,
            seqs: BTreeMap::new(),
            padded: false,
            max_tokens: max_tokens as usize,
            sampling: Sampling {
                temperature,
                top_k: top_k as usize,
                top_p,
                seed: cfg.int("seed", 0)? as u64,
            },
            languages,
        })
    }

    fn prompt(&self, item: &Item) -> Result<Vec<u32>, NodeError> {
        let text = item
            .first()
            .ok_or_else(|| NodeError::new("transformer_lm: no prompt input"))?
            .as_text()?;
        if let (Some(lang), Some(langs)) = (item.get(1), &self.languages) {
            let lang = lang.as_text()?;
            if !langs.iter().any(|l| l == lang) {
                return Err(NodeError::new(format!(
                    "unsupported language `{lang}`; this model translates to {}",
                    langs.join(", ")
                )));
            }
        }
        let p = prompt_tokens(&self.tok, text);
        if p.len() >= self.model.config.max_len {
            return Err(NodeError::new(format!(
                "the prompt is {} tokens; this model takes at most {}",
                p.len(),
                self.model.config.max_len - 1
            )));
        }
        Ok(p)
    }
}

/// A per-item seed from the prompt, so sampling does not depend on batch composition.
fn item_seed(seed: u64, prompt: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &t in prompt {
        h ^= u64::from(t);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Node for LmNode {
    /// Every `transformer_lm` generates token by token (`generate = false` decodes the same
    /// way; the key only tells the planner whether continuous batching applies).
    fn generator(&mut self) -> Option<&mut dyn Generate> {
        if self.padded {
            return None;
        }
        Some(self)
    }

    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        let prompts: Vec<Result<Vec<u32>, NodeError>> =
            batch.iter().map(|i| self.prompt(i)).collect();
        let ok: Vec<Vec<u32>> = prompts
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let seeds: Vec<u64> = ok
            .iter()
            .map(|p| item_seed(self.sampling.seed, p))
            .collect();
        let run = if self.padded {
            generate_padded
        } else {
            generate
        };
        let mut generated = match run(&self.model, &ok, self.max_tokens, &self.sampling, &seeds) {
            Ok(g) => g.into_iter(),
            Err(e) => {
                let msg = format!("transformer_lm forward failed: {e}");
                return batch
                    .iter()
                    .map(|_| Err(NodeError::new(msg.clone())))
                    .collect();
            }
        };
        prompts
            .into_iter()
            .map(|p| {
                let _ = p?;
                let out = generated
                    .next()
                    .ok_or_else(|| NodeError::new("transformer_lm: missing output"))?;
                Ok(vec![Value::Text(self.tok.decode(&out))])
            })
            .collect()
    }
}

impl LmNode {
    fn output(&self, s: &SeqState) -> Outputs {
        vec![Value::Text(self.tok.decode(s.generated()))]
    }
}

impl Generate for LmNode {
    fn admit(&mut self, seq: SeqId, item: Item) -> Result<usize, NodeError> {
        let prompt = self.prompt(&item)?;
        let n = prompt.len();
        self.seqs.insert(
            seq,
            Sequence {
                prompt_len: n,
                rng: SplitMix(item_seed(self.sampling.seed, &prompt)),
                tokens: prompt,
                state: None,
            },
        );
        Ok(n)
    }

    fn prefill(&mut self, seqs: &[SeqId]) -> Vec<(SeqId, Step)> {
        let mut out: Vec<(SeqId, Option<Step>)> = Vec::with_capacity(seqs.len());
        let mut todo: Vec<SeqId> = Vec::new();
        for &id in seqs {
            match self.seqs.get(&id) {
                None => out.push((id, Some(Step::Done(Err(unknown(id)))))),
                Some(Sequence { state: Some(s), .. }) => {
                    out.push((id, Some(Step::Running { cached: s.cached() })))
                }
                Some(_) => {
                    out.push((id, None));
                    todo.push(id);
                }
            }
        }
        let inputs: Vec<Vec<u32>> = todo
            .iter()
            .map(|id| std::mem::take(&mut self.seqs.get_mut(id).expect("listed above").tokens))
            .collect();
        let mut filled: BTreeMap<SeqId, Step> = BTreeMap::new();
        match self.model.prefill(&inputs) {
            Ok(states) => {
                for (id, mut st) in todo.iter().zip(states) {
                    let seq = self.seqs.get_mut(id).expect("listed above");
                    st.prompt_len = seq.prompt_len;
                    filled.insert(
                        *id,
                        Step::Running {
                            cached: st.cached(),
                        },
                    );
                    seq.state = Some(st);
                }
            }
            Err(e) => {
                let msg = format!("transformer_lm forward failed: {e}");
                for id in &todo {
                    self.seqs.remove(id);
                    filled.insert(*id, Step::Done(Err(NodeError::new(msg.clone()))));
                }
            }
        }
        out.into_iter()
            .map(|(id, step)| {
                let step = step
                    .or_else(|| filled.remove(&id))
                    .expect("every prefilled id has an outcome");
                (id, step)
            })
            .collect()
    }

    fn step(&mut self, seqs: &[SeqId]) -> Vec<(SeqId, Step)> {
        // A decode step is an iteration in which nothing joins: one new token per sequence.
        self.prefill_and_step(&[], seqs).1
    }

    /// One forward pass per iteration ([`TransformerLm::extend`]): the joining sequences'
    /// prompts (or, after a preemption, prompt plus generated tokens) beside one new token for
    /// each running sequence.
    fn prefill_and_step(
        &mut self,
        prefill: &[SeqId],
        step: &[SeqId],
    ) -> (mars_runtime::node::Outcomes, mars_runtime::node::Outcomes) {
        let limit = self.model.config.max_len;
        // Outcomes known before the pass (`Some`), or to come from it (`None`).
        let mut filled: Vec<(SeqId, Option<Step>)> = Vec::with_capacity(prefill.len());
        let mut stepped: Vec<(SeqId, Option<Step>)> = Vec::with_capacity(step.len());
        let mut batch: Vec<(SeqId, SeqState)> = Vec::new();
        let mut chunks: Vec<Vec<u32>> = Vec::new();
        for &id in prefill {
            match self.seqs.get_mut(&id) {
                None => filled.push((id, Some(Step::Done(Err(unknown(id)))))),
                Some(Sequence { state: Some(s), .. }) => {
                    let cached = s.cached();
                    filled.push((id, Some(Step::Running { cached })));
                }
                Some(seq) => {
                    chunks.push(std::mem::take(&mut seq.tokens));
                    batch.push((id, SeqState::empty(seq.prompt_len)));
                    filled.push((id, None));
                }
            }
        }
        for &id in step {
            let Some(seq) = self.seqs.get_mut(&id) else {
                stepped.push((id, Some(Step::Done(Err(unknown(id))))));
                continue;
            };
            let Some(mut st) = seq.state.take() else {
                self.seqs.remove(&id);
                let e = NodeError::new(format!("sequence {id} was stepped before its prefill"));
                stepped.push((id, Some(Step::Done(Err(e)))));
                continue;
            };
            match choose_next(
                &mut st,
                &self.sampling,
                &mut seq.rng,
                self.max_tokens,
                limit,
            ) {
                Some(t) => {
                    chunks.push(vec![t]);
                    batch.push((id, st));
                    stepped.push((id, None));
                }
                None => {
                    self.seqs.remove(&id);
                    stepped.push((id, Some(Step::Done(Ok(self.output(&st))))));
                }
            }
        }
        let result = {
            let mut refs: Vec<&mut SeqState> = batch.iter_mut().map(|(_, s)| s).collect();
            self.model.extend(&mut refs, &chunks)
        };
        let mut outcomes: BTreeMap<SeqId, Step> = BTreeMap::new();
        match result {
            Ok(()) => {
                for (id, st) in batch {
                    outcomes.insert(
                        id,
                        Step::Running {
                            cached: st.cached(),
                        },
                    );
                    self.seqs.get_mut(&id).expect("taken above").state = Some(st);
                }
            }
            Err(e) => {
                let msg = format!("transformer_lm forward failed: {e}");
                for (id, _) in batch {
                    self.seqs.remove(&id);
                    outcomes.insert(id, Step::Done(Err(NodeError::new(msg.clone()))));
                }
            }
        }
        let resolve = |list: Vec<(SeqId, Option<Step>)>, outcomes: &mut BTreeMap<SeqId, Step>| {
            list.into_iter()
                .map(|(id, step)| {
                    let step = step
                        .or_else(|| outcomes.remove(&id))
                        .expect("every sequence in the pass has an outcome");
                    (id, step)
                })
                .collect::<Vec<_>>()
        };
        let filled = resolve(filled, &mut outcomes);
        (filled, resolve(stepped, &mut outcomes))
    }

    fn preempt(&mut self, seq: SeqId) -> usize {
        let Some(s) = self.seqs.get_mut(&seq) else {
            return 0;
        };
        match s.state.take() {
            Some(st) => {
                let freed = st.cached();
                s.tokens = st.tokens;
                freed
            }
            None => 0,
        }
    }

    fn forget(&mut self, seq: SeqId) {
        self.seqs.remove(&seq);
    }

    fn max_sequence_tokens(&self) -> usize {
        // A prompt holds at most `max_len - 1` tokens, and a sequence is decoded further only
        // while it stays under the position limit (see `choose_next`).
        self.model.config.max_len.saturating_sub(1).max(1)
    }

    fn kv_capacity(&self) -> Option<usize> {
        (self.kv_tokens > 0).then_some(self.kv_tokens)
    }

    fn generated_text(&self, seq: SeqId) -> Option<String> {
        let s = self.seqs.get(&seq)?;
        Some(match &s.state {
            Some(st) => self.tok.decode(st.generated()),
            // Preempted: its tokens wait for a recompute.
            None => self.tok.decode(s.tokens.get(s.prompt_len..).unwrap_or(&[])),
        })
    }
}

fn unknown(id: SeqId) -> NodeError {
    NodeError::new(format!("no sequence {id} in this replica"))
}

/// Which vision architecture a [`VisionNode`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vision {
    Unet,
    Crnn,
}

impl Vision {
    pub fn arch(self) -> &'static str {
        match self {
            Vision::Unet => "unet_tiny",
            Vision::Crnn => "crnn_tiny",
        }
    }
}

/// Deterministic random weights for a vision architecture (cost stand-ins): `unet_tiny` with
/// `channels` channels, `crnn_tiny` reading `image_size`-high crops over `alphabet`.
pub fn init_vision_weights(
    path: &Path,
    arch: Vision,
    channels: usize,
    image_size: usize,
    alphabet: &str,
    seed: u64,
) -> candle_core::Result<()> {
    let mut meta = HashMap::new();
    meta.insert("mars.arch".to_string(), arch.arch().to_string());
    meta.insert("mars.random".to_string(), "true".to_string());
    let tensors = match arch {
        Vision::Unet => {
            meta.insert(
                "mars.config".into(),
                serde_json::json!({ "channels": channels }).to_string(),
            );
            vision::random_tensors(&vision::unet_shapes(channels), seed)?
        }
        Vision::Crnn => {
            meta.insert(
                "mars.config".into(),
                serde_json::json!({ "image_size": image_size }).to_string(),
            );
            meta.insert("alphabet".into(), alphabet.to_string());
            let classes = alphabet.chars().count() + 1;
            vision::random_tensors(&vision::crnn_shapes(image_size, classes), seed)?
        }
    };
    save_safetensors(path, &tensors, meta)
}

/// A `unet_tiny` or `crnn_tiny` node: one image in; a mask or a text out. Batched: the whole
/// batch is resized and run through one forward pass.
struct VisionNode {
    arch: Vision,
    tensors: HashMap<String, Tensor>,
    size: usize,
    alphabet: Vec<char>,
}

impl VisionNode {
    fn from_ctx(ctx: &NodeContext, arch: Vision) -> Result<VisionNode, NodeError> {
        let cfg = ModelConfig::of(ctx)?;
        let w = cfg.weights(&ctx.base_dir)?;
        let fail = |m: String| NodeError::new(format!("node `{}`: {m}", ctx.node.id));
        match w.metadata.get("mars.arch") {
            Some(a) if a == arch.arch() => {}
            other => {
                return Err(fail(format!(
                    "the weights are for {:?}, not `{}`",
                    other,
                    arch.arch()
                )))
            }
        }
        let stored: serde_json::Value = w
            .metadata
            .get("mars.config")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| fail("the weights' metadata has no valid `mars.config`".into()))?;
        let (size, alphabet, shapes) = match arch {
            Vision::Unet => {
                let c = stored["channels"]
                    .as_u64()
                    .ok_or_else(|| fail("`mars.config` has no `channels`".into()))?
                    as usize;
                cfg.check_matches("channels", c)?;
                let size = cfg.int("image_size", 256)?;
                if size < 4 || size % 4 != 0 || size > 4096 {
                    return Err(cfg.err("image_size", "must be a multiple of 4 in 4..=4096"));
                }
                (size as usize, Vec::new(), vision::unet_shapes(c))
            }
            Vision::Crnn => {
                let s = stored["image_size"]
                    .as_u64()
                    .ok_or_else(|| fail("`mars.config` has no `image_size`".into()))?
                    as usize;
                cfg.check_matches("image_size", s)?;
                let alphabet: Vec<char> = w
                    .metadata
                    .get("alphabet")
                    .ok_or_else(|| fail("the weights' metadata has no `alphabet`".into()))?
                    .chars()
                    .collect();
                if let Some(a) = cfg.text("alphabet")? {
                    if a.chars().collect::<Vec<_>>() != alphabet {
                        return Err(cfg.err("alphabet", "differs from the weights' alphabet"));
                    }
                }
                let shapes = vision::crnn_shapes(s, alphabet.len() + 1);
                (s, alphabet, shapes)
            }
        };
        for (name, shape) in shapes {
            match w.tensors.get(&name) {
                Some(t) if t.dims() == shape.as_slice() => {}
                Some(t) => {
                    return Err(fail(format!(
                        "tensor `{name}` has shape {:?}, expected {shape:?}",
                        t.dims()
                    )))
                }
                None => return Err(fail(format!("the weights have no tensor `{name}`"))),
            }
        }
        Ok(VisionNode {
            arch,
            tensors: w.tensors,
            size,
            alphabet,
        })
    }

    fn forward(&self, images: &[&mars_runtime::ImageData]) -> candle_core::Result<Vec<Value>> {
        let s = self.size;
        match self.arch {
            Vision::Unet => {
                let x = vision::image_batch(images, s as u32, s as u32)?;
                let m = vision::unet_forward(&self.tensors, &x)?;
                (0..images.len())
                    .map(|i| {
                        let data = m.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                        Ok(Value::Tensor(Arc::new(mars_runtime::TensorData {
                            dtype: "f32".into(),
                            shape: vec![1, s, s],
                            data,
                        })))
                    })
                    .collect()
            }
            Vision::Crnn => {
                let x = vision::image_batch(images, s as u32, 4 * s as u32)?;
                let ids = vision::crnn_forward(&self.tensors, &x)?;
                Ok(ids
                    .iter()
                    .map(|c| Value::Text(vision::ctc_decode(c, &self.alphabet)))
                    .collect())
            }
        }
    }
}

impl Node for VisionNode {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        let images: Vec<Result<&mars_runtime::ImageData, NodeError>> = batch
            .iter()
            .map(|i| match i.first() {
                Some(Value::Image(img)) if img.width > 0 && img.height > 0 => Ok(img.as_ref()),
                Some(Value::Image(_)) => Err(NodeError::new("empty image")),
                Some(other) => Err(NodeError::new(format!(
                    "expected Image, got {}",
                    other.kind()
                ))),
                None => Err(NodeError::new("missing image")),
            })
            .collect();
        let ok: Vec<&mars_runtime::ImageData> = images
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let mut outs = match self.forward(&ok) {
            Ok(o) => o.into_iter(),
            Err(e) => {
                let msg = format!("{} forward failed: {e}", self.arch.arch());
                return batch
                    .iter()
                    .map(|_| Err(NodeError::new(msg.clone())))
                    .collect();
            }
        };
        images
            .into_iter()
            .map(|r| {
                r?;
                outs.next()
                    .map(|v| vec![v])
                    .ok_or_else(|| NodeError::new("missing output"))
            })
            .collect()
    }
}
