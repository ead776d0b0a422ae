//! `std.vector` (SPEC §4.10): retrieval over a small corpus. `flat_index` is a model arch that
//! embeds every passage of a corpus file at load with a `bert` encoder, keeps the normalized
//! embeddings in one flat matrix and answers a query embedding with the `k` passages of
//! highest cosine similarity (exact search, one dot product per passage); `vector.rag_prompt`
//! writes a question and its passages into a prompt for a chat model.

use std::path::Path;
use std::sync::Arc;

use mars_runtime::node::per_item;
use mars_runtime::{Item, Node, NodeContext, NodeError, Outputs, Registry, Value};

use crate::models::bert::Bert;
use crate::params::text_param;

/// Register `flat_index` (a model arch) and `vector.rag_prompt`.
pub fn register(registry: &mut Registry) {
    registry.model(
        "flat_index",
        Arc::new(|ctx: &NodeContext| Ok(Box::new(FlatIndex::from_ctx(ctx)?) as Box<dyn Node>)),
    );
    registry.builtin(
        "vector.rag_prompt",
        Arc::new(|ctx: &NodeContext| {
            let instruction = text_param(ctx, "instruction", Some(DEFAULT_INSTRUCTION))?;
            Ok(per_item(move |item| rag_prompt(&instruction, &item)))
        }),
    );
}

pub const DEFAULT_INSTRUCTION: &str =
    "Answer the customer's question in one or two sentences, using only these facts:";

fn rag_prompt(instruction: &str, item: &Item) -> Result<Outputs, NodeError> {
    let question = item
        .first()
        .ok_or_else(|| NodeError::new("rag_prompt: no question"))?
        .as_text()?;
    let passages = item
        .get(1)
        .ok_or_else(|| NodeError::new("rag_prompt: no passages"))?
        .as_list()?;
    let mut s = format!("{instruction}\n");
    for p in passages {
        s.push_str(&format!("- {}\n", p.as_text()?));
    }
    s.push_str(&format!("\nQuestion: {question}"));
    Ok(vec![Value::Text(s)])
}

/// Passages of a corpus file: JSONL, one object a line, the passage under `field`.
pub fn read_corpus(path: &Path, field: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read corpus {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        let p = v
            .get(field)
            .and_then(|p| p.as_str())
            .ok_or_else(|| format!("{}:{}: no text field `{field}`", path.display(), i + 1))?;
        out.push(p.to_string());
    }
    if out.is_empty() {
        return Err(format!("corpus {} has no passages", path.display()));
    }
    Ok(out)
}

/// A flat index: normalized passage embeddings, row by row.
pub struct Index {
    pub passages: Vec<String>,
    pub dim: usize,
    pub rows: Vec<f32>,
}

impl Index {
    pub fn build(bert: &Bert, passages: Vec<String>) -> Result<Index, String> {
        let dim = bert.dim();
        let mut rows = Vec::with_capacity(passages.len() * dim);
        for p in &passages {
            rows.extend(bert.embed(p)?);
        }
        Ok(Index {
            passages,
            dim,
            rows,
        })
    }

    /// The `k` best passages' indices for a query embedding, best first (ties: lower index).
    pub fn top_k(&self, query: &[f32], k: usize) -> Result<Vec<usize>, String> {
        if query.len() != self.dim {
            return Err(format!(
                "the query embedding has {} dimensions, the index {}",
                query.len(),
                self.dim
            ));
        }
        let mut scored: Vec<(f32, usize)> = self
            .rows
            .chunks(self.dim)
            .enumerate()
            .map(|(i, r)| (r.iter().zip(query).map(|(a, b)| a * b).sum(), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        Ok(scored.into_iter().take(k).map(|(_, i)| i).collect())
    }
}

struct FlatIndex {
    index: Index,
    k: usize,
}

impl FlatIndex {
    fn from_ctx(ctx: &NodeContext) -> Result<FlatIndex, NodeError> {
        let fail = |m: String| NodeError::new(format!("node `{}`: {m}", ctx.node.id));
        let config = &ctx
            .node
            .implementation
            .model
            .as_ref()
            .ok_or_else(|| fail("not a model".into()))?
            .config;
        let corpus = config
            .get("corpus")
            .and_then(|v| v.as_str())
            .ok_or_else(|| fail("model key `corpus` (a JSONL file) is missing".into()))?;
        let field = config
            .get("field")
            .and_then(|v| v.as_str())
            .unwrap_or("text");
        let k = config.get("k").and_then(|v| v.as_u64()).unwrap_or(3);
        if k == 0 {
            return Err(fail("model key `k` must be at least 1".into()));
        }
        let opened = crate::store::open_weights(&ctx.node, &ctx.base_dir)
            .map_err(|e| NodeError::new(e.0))?;
        let bert = Bert::load(&opened.path, 256).map_err(fail)?;
        let passages = read_corpus(&ctx.base_dir.join(corpus), field).map_err(fail)?;
        let index = Index::build(&bert, passages).map_err(fail)?;
        Ok(FlatIndex {
            index,
            k: k as usize,
        })
    }
}

impl Node for FlatIndex {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        batch
            .into_iter()
            .map(|item| {
                let q = match item.first() {
                    Some(Value::Tensor(t)) => &t.data,
                    Some(other) => {
                        return Err(NodeError::new(format!(
                            "flat_index: expected a Tensor embedding, got {}",
                            other.kind()
                        )))
                    }
                    None => return Err(NodeError::new("flat_index: no query")),
                };
                let best = self.index.top_k(q, self.k).map_err(NodeError::new)?;
                let list = best
                    .into_iter()
                    .map(|i| Value::Text(self.index.passages[i].clone()))
                    .collect();
                Ok(vec![Value::List(list)])
            })
            .collect()
    }
}
