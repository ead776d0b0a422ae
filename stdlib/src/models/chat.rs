//! The node of a GGUF chat model (`arch = "llama"` and `"gemma3"`; SPEC §4.9): a message in,
//! the model's answer out. The message is written into the model's chat template, tokenized with the
//! GGUF's tokenizer, and decoded token by token under the runtime's step-level [`Generate`]
//! interface, one KV cache per sequence, so the continuous-batching scheduler drives it.
//! `run_batch` drives the same interface itself: a batch gives the same answers as the
//! scheduler, and as one-at-a-time decoding (up to float rounding in batched matmuls).

use std::collections::{BTreeMap, BTreeSet};

use mars_runtime::{Generate, Item, Node, NodeContext, NodeError, Outputs, SeqId, Step, Value};
use tokenizers::Tokenizer;

use super::gemma3::{Decoder, Gemma3};
use super::gguf::{bpe_tokenizer, ChatTemplate, Gguf};
use super::kv::KvOptions;
use super::llama::{Llama, LlamaState};
use super::llm_quant::{load_stats, LlmQuant};
use super::quant::ActStats;
use super::transformer_lm::{Sampling, SplitMix};
use super::ModelConfig;

/// A loaded chat model: weights, tokenizer, template and end tokens.
pub struct ChatModel {
    pub llama: Decoder,
    pub tokenizer: Tokenizer,
    /// Prepended to every prompt (`tokenizer.ggml.add_bos_token`; SentencePiece models only).
    pub bos: Option<u32>,
    pub template: ChatTemplate,
    /// The system message the template writes by default.
    pub default_system: Option<String>,
    /// Tokens that end an answer (the GGUF's eos, `<|im_end|>`, `<|endoftext|>`).
    pub end_tokens: BTreeSet<u32>,
}

impl ChatModel {
    /// Read a Llama or Gemma 3 GGUF and build its tokenizer and template (f32 weights).
    pub fn load(path: &std::path::Path, positions: usize) -> Result<ChatModel, String> {
        ChatModel::load_quantized(path, positions, LlmQuant::None, None)
    }

    /// [`ChatModel::load`] with the linear layers in a `quantize` mode.
    pub fn load_quantized(
        path: &std::path::Path,
        positions: usize,
        quant: LlmQuant,
        stats: Option<&BTreeMap<String, ActStats>>,
    ) -> Result<ChatModel, String> {
        ChatModel::load_pruned(path, positions, quant, stats, 0.0)
    }

    /// [`ChatModel::load_quantized`] with a `prune` share of every block's FFN channels
    /// dropped first ([`super::llm_prune`]; needs the calibration statistics).
    pub fn load_pruned(
        path: &std::path::Path,
        positions: usize,
        quant: LlmQuant,
        stats: Option<&BTreeMap<String, ActStats>>,
        prune: f64,
    ) -> Result<ChatModel, String> {
        let mut g = Gguf::read(path)?;
        let gemma = g.text("general.architecture")? == "gemma3";
        let prune = super::llm_prune::check_prune(prune)?;
        let mut pruned_stats = None;
        if prune > 0.0 {
            if gemma {
                return Err(
                    "`prune` is implemented for `arch = \"llama\"` only, not for gemma3".into(),
                );
            }
            let mut s = stats
                .cloned()
                .ok_or("prune needs calibration statistics (model key `calibration`; make them with `marsc weights calibrate-llm`)")?;
            let layers = g.uint("llama.block_count")?;
            super::llm_prune::prune_ffn(&mut g, layers, &mut s, prune)?;
            pruned_stats = Some(s);
        }
        let stats = pruned_stats.as_ref().or(stats);
        let (tokenizer, bos) = match gemma {
            true => super::spm::spm_tokenizer_and_bos(&g)?,
            false => (bpe_tokenizer(&g)?, None),
        };
        let (template, default_system) = ChatTemplate::of(&g);
        let mut end_tokens = BTreeSet::new();
        if let Ok(e) = g.uint("tokenizer.ggml.eos_token_id") {
            end_tokens.insert(e as u32);
        }
        for t in ["<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>"] {
            if let Some(id) = tokenizer.token_to_id(t) {
                end_tokens.insert(id);
            }
        }
        let llama = match gemma {
            true if !matches!(quant, LlmQuant::None) => {
                return Err(
                    "`quantize` is implemented for `arch = \"llama\"` only, not for gemma3".into(),
                )
            }
            true => Decoder::Gemma3(Gemma3::from_gguf(g, positions)?),
            false => Decoder::Llama(Llama::from_gguf_quantized(g, positions, quant, stats)?),
        };
        Ok(ChatModel {
            llama,
            tokenizer,
            bos,
            template,
            default_system,
            end_tokens,
        })
    }

    /// Token ids of a text (special tokens such as `<|im_start|>` match whole).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let ids = self
            .tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("tokenizing failed: {e}"))?;
        Ok(match self.bos {
            Some(b) if ids.first() != Some(&b) => [vec![b], ids].concat(),
            _ => ids,
        })
    }

    /// The text of generated tokens (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}

/// Greedy decoding of one prompt, one token at a time, without the node: what the reference
/// test compares and `marsc bench` measures against. Stops at an end token or `max_tokens`.
pub fn greedy(model: &ChatModel, prompt: &[u32], max_tokens: usize) -> Result<Vec<u32>, String> {
    let mut st = LlamaState::default();
    model
        .llama
        .extend(&mut [&mut st], &[prompt.to_vec()])
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut rng = SplitMix(0);
    while out.len() < max_tokens {
        let t = Sampling::greedy().pick(&st.logits, &mut rng);
        if model.end_tokens.contains(&t) {
            break;
        }
        out.push(t);
        if st.position() + 1 >= model.llama.positions() {
            break;
        }
        model
            .llama
            .extend(&mut [&mut st], &[vec![t]])
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The `llama` node.
pub struct ChatNode {
    model: ChatModel,
    system: Option<String>,
    raw: bool,
    /// A prompt written around the message (`{message}` marks it), sent as it is.
    template: Option<String>,
    max_tokens: usize,
    stop: String,
    sampling: Sampling,
    /// The KV bound in this node's tokens: `kv_tokens`, or `kv_mib` over the bytes a token
    /// takes; 0: derived.
    kv_tokens: usize,
    /// Whether `kv_keep` prunes prompts (a recomputed sequence then prefills its prompt alone).
    prunes: bool,
    seqs: BTreeMap<SeqId, Sequence>,
}

struct Sequence {
    prompt_len: usize,
    /// Prompt plus generated tokens.
    tokens: Vec<u32>,
    rng: SplitMix,
    /// Caches and logits, once prefilled (dropped on preemption).
    state: Option<LlamaState>,
}

impl ChatNode {
    pub fn from_ctx(ctx: &NodeContext) -> Result<ChatNode, NodeError> {
        let cfg = ModelConfig::of(ctx)?;
        let fail = |m: String| NodeError::new(format!("node `{}`: {m}", ctx.node.id));
        let opened = crate::store::open_weights(&ctx.node, &ctx.base_dir)
            .map_err(|e| NodeError::new(e.0))?;
        let positions = cfg.int("max_positions", 2048)?;
        if positions < 2 {
            return Err(cfg.err("max_positions", "must be at least 2"));
        }
        let group = cfg.keys.get("group").map(|v| v.as_i64().unwrap_or(-1));
        let quant = LlmQuant::parse(cfg.text("quantize")?.unwrap_or("none"), group)
            .map_err(|e| cfg.err("quantize", &format!(": {e}")))?;
        let stats = match cfg.text("calibration")? {
            Some(p) if !p.is_empty() => Some(load_stats(&ctx.base_dir.join(p)).map_err(fail)?),
            _ => None,
        };
        let kv = KvOptions::parse(cfg.float("kv_keep", 1.0)?, cfg.text("kv")?.unwrap_or("f32"))
            .map_err(|(key, m)| cfg.err(key, &m))?;
        let prune = super::llm_prune::check_prune(cfg.float("prune", 0.0)?)
            .map_err(|m| cfg.err("prune", &format!(": {m}")))?;
        let mut model = ChatModel::load_pruned(
            &opened.path,
            positions as usize,
            quant,
            stats.as_ref(),
            prune,
        )
        .map_err(fail)?;
        model.llama.set_kv(kv).map_err(fail)?;
        let max_tokens = cfg.int("max_tokens", 128)?;
        if max_tokens < 1 {
            return Err(cfg.err("max_tokens", "must be at least 1"));
        }
        let temperature = cfg.float("temperature", 0.0)?;
        let top_p = cfg.float("top_p", 1.0)?;
        let top_k = cfg.int("top_k", 0)?;
        if temperature < 0.0 {
            return Err(cfg.err("temperature", "must be non-negative"));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(cfg.err("top_p", "must be in (0, 1]"));
        }
        if top_k < 0 {
            return Err(cfg.err("top_k", "must be non-negative"));
        }
        let mut kv_tokens = cfg.int("kv_tokens", 0)?;
        if kv_tokens < 0 {
            return Err(cfg.err("kv_tokens", "must be non-negative (0: derived)"));
        }
        let kv_mib = cfg.float("kv_mib", 0.0)?;
        if !(kv_mib >= 0.0 && kv_mib.is_finite()) {
            return Err(cfg.err("kv_mib", "must be a non-negative number of MiB (0: none)"));
        }
        if kv_mib > 0.0 {
            if kv_tokens > 0 {
                return Err(cfg.err("kv_mib", "and `kv_tokens` both bound the KV cache; set one"));
            }
            let per = model.llama.kv_bytes_per_token() as f64;
            kv_tokens = ((kv_mib * 1024.0 * 1024.0 / per).floor() as i64).max(1);
        }
        let system = match cfg.text("system")? {
            Some(s) if !s.is_empty() => Some(s.to_string()),
            _ => model.default_system.clone(),
        };
        let raw = matches!(cfg.keys.get("raw"), Some(serde_json::Value::Bool(true)));
        let template = cfg
            .text("prompt")?
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if template.as_ref().is_some_and(|t| !t.contains("{message}")) {
            return Err(cfg.err("prompt", "must contain `{message}` where the message goes"));
        }
        Ok(ChatNode {
            system,
            raw,
            template,
            max_tokens: max_tokens as usize,
            stop: cfg.text("stop")?.unwrap_or("").to_string(),
            sampling: Sampling {
                temperature,
                top_k: top_k as usize,
                top_p,
                seed: cfg.int("seed", 0)? as u64,
            },
            kv_tokens: kv_tokens as usize,
            prunes: kv.keep < 1.0,
            seqs: BTreeMap::new(),
            model,
        })
    }

    /// The prompt tokens of an item: its first input, in the chat template (unless `raw`).
    fn prompt(&self, item: &Item) -> Result<Vec<u32>, NodeError> {
        let text = item
            .first()
            .ok_or_else(|| NodeError::new("llama: no prompt input"))?
            .as_text()?;
        let text = if let Some(t) = &self.template {
            t.replace("{message}", text)
        } else if self.raw {
            text.to_string()
        } else {
            self.model.template.render(self.system.as_deref(), text)
        };
        let ids = self.model.encode(&text).map_err(NodeError::new)?;
        if ids.is_empty() {
            return Err(NodeError::new("the prompt is empty"));
        }
        if ids.len() >= self.model.llama.positions() {
            return Err(NodeError::new(format!(
                "the prompt is {} tokens; this node takes at most {} (model key `max_positions`)",
                ids.len(),
                self.model.llama.positions() - 1
            )));
        }
        Ok(ids)
    }

    fn answer(&self, seq: &Sequence) -> String {
        let text = self.model.decode(&seq.tokens[seq.prompt_len..]);
        let text = match self.stop.is_empty() {
            true => text.as_str(),
            false => text.split(self.stop.as_str()).next().unwrap_or(""),
        };
        text.trim().to_string()
    }

    /// Choose a running sequence's next token. `None`: the sequence has ended (end token,
    /// `max_tokens`, the stop text, or the position limit).
    fn next_token(&self, seq: &mut Sequence) -> Option<u32> {
        let st = seq.state.as_ref()?;
        let t = self.sampling.pick(&st.logits, &mut seq.rng);
        if self.model.end_tokens.contains(&t) {
            return None;
        }
        seq.tokens.push(t);
        let produced = seq.tokens.len() - seq.prompt_len;
        if produced >= self.max_tokens || seq.tokens.len() >= self.model.llama.positions() {
            return None;
        }
        if !self.stop.is_empty()
            && self
                .model
                .decode(&seq.tokens[seq.prompt_len..])
                .contains(self.stop.as_str())
        {
            return None;
        }
        Some(t)
    }
}

fn item_seed(seed: u64, prompt: &[u32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &t in prompt {
        h ^= u64::from(t);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn unknown(id: SeqId) -> NodeError {
    NodeError::new(format!("no sequence {id} in this replica"))
}

impl Node for ChatNode {
    fn generator(&mut self) -> Option<&mut dyn Generate> {
        Some(self)
    }

    /// A batch runs through the step-level interface: all prompts prefilled together, then
    /// every running sequence stepped together until each is done.
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        let base: SeqId = self.seqs.keys().next_back().map_or(0, |k| k + 1);
        let mut results: Vec<Option<Result<Outputs, NodeError>>> = Vec::new();
        let mut live: Vec<SeqId> = Vec::new();
        for (i, item) in batch.into_iter().enumerate() {
            let id = base + i as SeqId;
            match self.admit(id, item) {
                Ok(_) => {
                    live.push(id);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut record = |outcomes: Vec<(SeqId, Step)>, live: &mut Vec<SeqId>| {
            for (id, step) in outcomes {
                if let Step::Done(r) = step {
                    results[(id - base) as usize] = Some(r);
                    live.retain(|&x| x != id);
                }
            }
        };
        let filled = self.prefill(&live.clone());
        record(filled, &mut live);
        while !live.is_empty() {
            let stepped = self.step(&live.clone());
            record(stepped, &mut live);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(NodeError::new("no result"))))
            .collect()
    }
}

impl Generate for ChatNode {
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
        self.prefill_and_step(seqs, &[]).0
    }

    fn step(&mut self, seqs: &[SeqId]) -> Vec<(SeqId, Step)> {
        self.prefill_and_step(&[], seqs).1
    }

    /// One forward pass: the joining sequences' prompts (after a preemption, prompt plus
    /// generated tokens) beside one new token for each running sequence.
    fn prefill_and_step(
        &mut self,
        prefill: &[SeqId],
        step: &[SeqId],
    ) -> (mars_runtime::node::Outcomes, mars_runtime::node::Outcomes) {
        let mut filled: Vec<(SeqId, Option<Step>)> = Vec::new();
        let mut stepped: Vec<(SeqId, Option<Step>)> = Vec::new();
        let mut pass: Vec<(SeqId, LlamaState, Vec<u32>)> = Vec::new();
        // A recomputed sequence under pruning: its prompt is pruned as it was the first time,
        // then its generated tokens follow in a second pass (pruning sees prompts only).
        let mut tails: Vec<(usize, Vec<u32>)> = Vec::new();
        for &id in prefill {
            match self.seqs.get(&id) {
                None => filled.push((id, Some(Step::Done(Err(unknown(id)))))),
                Some(Sequence { state: Some(s), .. }) => {
                    filled.push((id, Some(Step::Running { cached: s.cached() })))
                }
                Some(seq) if self.prunes && seq.tokens.len() > seq.prompt_len => {
                    tails.push((pass.len(), seq.tokens[seq.prompt_len..].to_vec()));
                    let prompt = seq.tokens[..seq.prompt_len].to_vec();
                    pass.push((id, LlamaState::default(), prompt));
                    filled.push((id, None));
                }
                Some(seq) => {
                    pass.push((id, LlamaState::default(), seq.tokens.clone()));
                    filled.push((id, None));
                }
            }
        }
        for &id in step {
            let Some(mut seq) = self.seqs.remove(&id) else {
                stepped.push((id, Some(Step::Done(Err(unknown(id))))));
                continue;
            };
            if seq.state.is_none() {
                let e = NodeError::new(format!("sequence {id} was stepped before its prefill"));
                stepped.push((id, Some(Step::Done(Err(e)))));
                continue;
            }
            match self.next_token(&mut seq) {
                Some(t) => {
                    let st = seq.state.take().unwrap_or_default();
                    pass.push((id, st, vec![t]));
                    self.seqs.insert(id, seq);
                    stepped.push((id, None));
                }
                None => {
                    let answer = self.answer(&seq);
                    stepped.push((id, Some(Step::Done(Ok(vec![Value::Text(answer)])))));
                }
            }
        }
        let chunks: Vec<Vec<u32>> = pass.iter().map(|(_, _, c)| c.clone()).collect();
        let result = {
            let mut refs: Vec<&mut LlamaState> = pass.iter_mut().map(|(_, s, _)| s).collect();
            self.model.llama.extend(&mut refs, &chunks).and_then(|()| {
                if tails.is_empty() {
                    return Ok(());
                }
                let at: BTreeSet<usize> = tails.iter().map(|(i, _)| *i).collect();
                let mut refs: Vec<&mut LlamaState> = pass
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| at.contains(i))
                    .map(|(_, (_, s, _))| s)
                    .collect();
                let chunks: Vec<Vec<u32>> = tails.into_iter().map(|(_, t)| t).collect();
                self.model.llama.extend(&mut refs, &chunks)
            })
        };
        let mut outcomes: BTreeMap<SeqId, Step> = BTreeMap::new();
        match result {
            Ok(()) => {
                for (id, st, _) in pass {
                    outcomes.insert(
                        id,
                        Step::Running {
                            cached: st.cached(),
                        },
                    );
                    if let Some(seq) = self.seqs.get_mut(&id) {
                        seq.state = Some(st);
                    }
                }
            }
            Err(e) => {
                let msg = format!("llama forward failed: {e}");
                for (id, _, _) in pass {
                    self.seqs.remove(&id);
                    outcomes.insert(id, Step::Done(Err(NodeError::new(msg.clone()))));
                }
            }
        }
        let resolve = |list: Vec<(SeqId, Option<Step>)>, outcomes: &mut BTreeMap<SeqId, Step>| {
            list.into_iter()
                .map(|(id, s)| {
                    let s = s
                        .or_else(|| outcomes.remove(&id))
                        .unwrap_or_else(|| Step::Done(Err(unknown(id))));
                    (id, s)
                })
                .collect::<Vec<_>>()
        };
        let filled = resolve(filled, &mut outcomes);
        (filled, resolve(stepped, &mut outcomes))
    }

    fn preempt(&mut self, seq: SeqId) -> usize {
        self.seqs
            .get_mut(&seq)
            .and_then(|s| s.state.take())
            .map_or(0, |st| st.cached())
    }

    fn forget(&mut self, seq: SeqId) {
        self.seqs.remove(&seq);
    }

    fn max_sequence_tokens(&self) -> usize {
        self.model.llama.positions().saturating_sub(1).max(1)
    }

    fn kv_capacity(&self) -> Option<usize> {
        (self.kv_tokens > 0).then_some(self.kv_tokens)
    }

    fn generated_text(&self, seq: SeqId) -> Option<String> {
        let s = self.seqs.get(&seq)?;
        Some(self.model.decode(&s.tokens[s.prompt_len..]))
    }
}
