//! The profiler's measuring loop (`marsc profile`): runs each node kind of a plan alone, on each
//! device it can use, at batch sizes 1, 2, 4, … up to a bound, and measures what the planner's
//! cost model needs: median and p99 latency per batch, peak memory, CPU cores busy, and the
//! fan-out at map nodes.
//!
//! It works on a [`Plan`] (compiled without a profile), so the runtime never sees `.mars` source.
//! Inputs come from sample requests run through the upstream nodes (the user's samples, or
//! requests synthesized from the pipeline's input types); a node that receives nothing that way
//! is fed items synthesized from its declared input types.
//!
//! A generating model (`generate = true`) whose node has the step-level interface
//! ([`crate::node::Generate`]) is also measured step by step: the time of one decode step and
//! of one prefill at each batch size, and how many steps its sequences take over its inputs
//! (the planner's per-step cost model, SPEC.md 2.4.7).
//!
//! One thread measures; nothing else in the process should be busy while it does, since CPU
//! time and peak memory are read for the whole process (plus its child processes, for exec
//! nodes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mars_plan::{BatchPolicy, Device, Gpu};
use mars_plan::{
    DataType, DeviceProfile, Dim, KindProfile, Plan, PlanNode, Profile, TokenHistogram,
    PROFILE_VERSION,
};

use crate::node::{Generate, Item, NodeContext, Outputs, Registry, SeqId, Step};
use crate::value::{BoxData, ImageData, NodeError, TensorData, Value};

/// How long and how hard to measure.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// Batch sizes are measured up to this (and up to the plan's own batch bounds); see
    /// [`sizes_for`].
    pub max_batch: u32,
    /// At least this many timed runs per batch size...
    pub min_runs: u32,
    /// ... and at least this much time spent on them ...
    pub min_time: Duration,
    /// ... but never more runs than this.
    pub max_runs: u32,
    /// The GPU to profile model nodes on, when the target has one.
    pub gpu: Option<Gpu>,
    /// The folder exec commands and relative paths resolve against (the source's folder).
    pub base_dir: PathBuf,
    /// Sample requests (JSON objects keyed by input name); `None` synthesizes them.
    pub samples: Option<Vec<serde_json::Value>>,
    /// The folder `{"$file": …}` paths in the samples resolve against (the samples file's).
    /// `Image` inputs are decoded with the registry's `image.decode`.
    pub samples_dir: Option<PathBuf>,
}

impl Default for ProfileOptions {
    fn default() -> ProfileOptions {
        ProfileOptions {
            max_batch: 32,
            min_runs: 10,
            min_time: Duration::from_millis(500),
            max_runs: 1000,
            gpu: None,
            base_dir: PathBuf::from("."),
            samples: None,
            samples_dir: None,
        }
    }
}

/// How many requests are synthesized when no samples are given.
const SYNTHETIC_REQUESTS: usize = 16;

/// Progress of a profiling run, for a progress bar.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub kind: &'a str,
    pub device: Device,
    pub batch: u32,
    /// Measurements finished so far and in all (one per kind, device and batch size).
    pub done: usize,
    pub total: usize,
}

/// The result: the profile, and remarks worth showing the user.
#[derive(Debug, Clone)]
pub struct ProfileReport {
    pub profile: Profile,
    /// E.g. which inputs a kind was measured on, kinds whose every item failed, devices skipped.
    pub notes: Vec<String>,
}

/// Why profiling could not finish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("node `{node}` (kind `{kind}`) could not be built: {message}")]
    Instantiate {
        node: String,
        kind: String,
        message: String,
    },
    #[error("sample request {line}: {message}")]
    Sample { line: usize, message: String },
    #[error("the plan is inconsistent: {0}")]
    Plan(String),
}

/// The batch sizes measured up to `max`: 1, 2, 4, …, and `max` itself.
pub fn batch_sizes(max: u32) -> Vec<u32> {
    let max = max.max(1);
    let mut sizes = Vec::new();
    let mut b = 1;
    while b < max {
        sizes.push(b);
        b *= 2;
    }
    sizes.push(max);
    sizes
}

/// The sizes measured for a kind: powers of two up to the larger of `max_batch` and the
/// largest batch bound the plan sets for it, plus `max_batch` and every such bound exactly (so
/// `@batch(max = 12)` can be planned at 12).
pub fn sizes_for(max_batch: u32, bounds: &[u32]) -> Vec<u32> {
    let top = bounds.iter().copied().chain([max_batch]).max().unwrap_or(1);
    let mut sizes: BTreeSet<u32> = batch_sizes(top).into_iter().collect();
    sizes.insert(max_batch.max(1));
    sizes.extend(bounds.iter().map(|&b| b.max(1)));
    sizes.into_iter().collect()
}

/// Profile every node kind of `plan`. Kinds are keyed as the plan names them (`PlanNode::kind`).
/// Where nodes of one kind differ in parameters or implementation, the first node's variant is
/// written under the kind and each node of another variant under `kind@node_id`.
pub fn profile_plan(
    plan: &Plan,
    registry: &Registry,
    options: &ProfileOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ProfileReport, ProfileError> {
    let mut notes = Vec::new();

    // One measurement per kind and distinct (parameters, implementation). The first such
    // variant of a kind is written under the kind; every node of another variant gets an entry
    // `kind@node_id` of its own (see SPEC, "Node kinds").
    let mut variants: Vec<Variant<'_>> = Vec::new();
    for node in &plan.nodes {
        let same = |v: &Variant<'_>| {
            v.node.kind == node.kind
                && v.node.params == node.params
                && v.node.implementation == node.implementation
        };
        // A batch bound the plan already has (an annotation) is measured exactly.
        let bound = (node.batch.policy != BatchPolicy::None && node.batch.max > 1)
            .then_some(node.batch.max);
        if let Some(i) = variants.iter().position(same) {
            if variants[i].keys[0] != node.kind {
                variants[i].keys.push(format!("{}@{}", node.kind, node.id));
            }
            variants[i].bounds.extend(bound);
            continue;
        }
        let keys = match variants.iter().find(|v| v.node.kind == node.kind) {
            None => vec![node.kind.clone()],
            Some(first) => {
                notes.push(format!(
                    "nodes `{}` and `{}` are both of kind `{}` but differ in parameters; `{}` is measured on its own as `{}@{}`",
                    first.node.id, node.id, node.kind, node.id, node.kind, node.id
                ));
                vec![format!("{}@{}", node.kind, node.id)]
            }
        };
        variants.push(Variant {
            node,
            keys,
            bounds: bound.into_iter().collect(),
        });
    }
    variants.sort_by(|a, b| a.keys[0].cmp(&b.keys[0]));

    let flows = propagate(plan, registry, options)?;
    let devices_of = |node: &PlanNode| -> Vec<Device> {
        let mut d = vec![Device::Cpu];
        if options.gpu.is_some() && node.implementation.model.is_some() {
            d.push(Device::Gpu);
        }
        d
    };
    let total: usize = variants
        .iter()
        .map(|v| devices_of(v.node).len() * sizes_for(options.max_batch, &v.bounds).len())
        .sum();
    let mut done = 0;

    let mut profile = Profile {
        mars_profile: PROFILE_VERSION,
        nodes: BTreeMap::new(),
        fanout: BTreeMap::new(),
        runtime: None,
    };
    for variant in &variants {
        let (kind, node) = (variant.keys[0].as_str(), variant.node);
        let sizes = sizes_for(options.max_batch, &variant.bounds);
        let (pool, source) = match flows.items.get(&node.id) {
            Some(items) if !items.is_empty() => (items.clone(), flows.source),
            _ => (
                synthetic_items(node)?,
                "inputs synthesized from its declared types",
            ),
        };
        notes.push(format!(
            "kind `{kind}` measured on node `{}` with {} {source}",
            node.id,
            pool.len()
        ));
        let mut kp = KindProfile::default();
        for device in devices_of(node) {
            let mut ctx = NodeContext {
                node: node.clone(),
                replica: 0,
                base_dir: options.base_dir.clone(),
            };
            ctx.node.device = device;
            ctx.node.replicas = 1;
            if device == Device::Gpu {
                ctx.node.gpu = options.gpu.as_ref().map(|g| g.name.clone());
            }
            let measured = measure_kind(&ctx, registry, &pool, &sizes, options, &mut |batch| {
                progress(Progress {
                    kind,
                    device,
                    batch,
                    done,
                    total,
                });
                done += 1;
            });
            let measured = match measured {
                Ok(m) => m,
                Err(e) if device == Device::Gpu => {
                    notes.push(format!("kind `{kind}` not profiled on gpu: {}", e.message));
                    done += sizes.len();
                    continue;
                }
                Err(e) => {
                    return Err(ProfileError::Instantiate {
                        node: node.id.clone(),
                        kind: kind.to_string(),
                        message: e.message,
                    })
                }
            };
            if let Some(g) = &measured.generation {
                if kp.output_tokens.is_none() {
                    kp.output_tokens = TokenHistogram::from_counts(&g.lengths);
                    kp.prompt_tokens = Some(round(g.prompt_tokens, 1000.0));
                    let n: usize = g.lengths.values().sum();
                    let mean = g
                        .lengths
                        .iter()
                        .map(|(&t, &c)| f64::from(t) * c as f64)
                        .sum::<f64>()
                        / n.max(1) as f64;
                    notes.push(format!(
                        "kind `{kind}` generates: measured per decode step; its {n} sequences took {} steps on average",
                        round(mean, 1000.0)
                    ));
                }
            } else if let Some(why) = &measured.no_generation {
                notes.push(format!(
                    "kind `{kind}` on {}: not measured per step ({why}); the planner costs it by whole batches",
                    device_name(device)
                ));
            }
            if measured.all_failed {
                notes.push(format!(
                    "kind `{kind}` on {}: every item failed ({}); the latencies are those of the failure path, profile with --input samples",
                    device_name(device),
                    measured.first_error.as_deref().unwrap_or("no message")
                ));
            }
            match device {
                Device::Cpu => kp.cpu = Some(measured.profile),
                Device::Gpu => kp.gpu = Some(measured.profile),
            }
        }
        for key in &variant.keys {
            profile.nodes.insert(key.clone(), kp.clone());
        }
    }
    if options.samples.is_some() {
        profile.fanout = flows.fanout;
    }
    Ok(ProfileReport { profile, notes })
}

fn device_name(d: Device) -> &'static str {
    match d {
        Device::Cpu => "cpu",
        Device::Gpu => "gpu",
    }
}

/// Nodes of one kind with the same parameters and implementation: measured once, on `node`,
/// and written under each of `keys`.
struct Variant<'a> {
    node: &'a PlanNode,
    keys: Vec<String>,
    /// The `batch.max` of those of its nodes whose plan already bounds their batches.
    bounds: Vec<u32>,
}

/// The measurements of one kind on one device.
struct Measured {
    profile: DeviceProfile,
    all_failed: bool,
    first_error: Option<String>,
    /// A generating model's sequences, when measured step by step.
    generation: Option<Sequences>,
    /// Why a generating model was not measured step by step.
    no_generation: Option<String>,
}

/// What a generating model's sequences look like over the kind's inputs.
struct Sequences {
    /// Decode steps a sequence took (its `step` calls, the last one ending it) → how many.
    lengths: BTreeMap<u32, usize>,
    /// Mean prompt length in tokens (what `admit` reported).
    prompt_tokens: f64,
}

/// Whether a plan node is a generating model (`generate = true` in its model block).
pub fn generates(node: &PlanNode) -> bool {
    node.implementation
        .model
        .as_ref()
        .is_some_and(|m| m.config.get("generate") == Some(&serde_json::Value::Bool(true)))
}

fn measure_kind(
    ctx: &NodeContext,
    registry: &Registry,
    pool: &[Item],
    sizes: &[u32],
    options: &ProfileOptions,
    step: &mut dyn FnMut(u32),
) -> Result<Measured, NodeError> {
    let baseline_rss = rss_bytes();
    let mut node = registry.instantiate(ctx)?;
    let mut next = 0usize;
    let mut take = |b: u32| -> Vec<Item> {
        (0..b)
            .map(|_| {
                let item = pool[next % pool.len()].clone();
                next += 1;
                item
            })
            .collect()
    };
    // One untimed run first: lazy initialisation (weight repacking, a program's imports)
    // is not the steady state the planner models.
    let warm = guarded_run(node.as_mut(), take(1));
    let mut failed = warm.iter().filter(|r| r.is_err()).count();
    let mut ran = warm.len();
    let mut first_error = warm
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| e.message.clone()));

    let (mut latency, mut p99, mut memory) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_total, mut wall_total) = (Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::new();
    for &b in sizes {
        step(b);
        let peak_resettable = reset_peak_rss();
        let mut peak = rss_bytes();
        let mut times = Vec::new();
        let cpu_before = process_cpu_time() + descendants(std::process::id()).cpu;
        let started = Instant::now();
        while times.len() < options.min_runs as usize
            || (started.elapsed() < options.min_time
                && times.len() < options.max_runs.max(options.min_runs) as usize)
        {
            let batch = take(b);
            let t0 = Instant::now();
            let out = guarded_run(node.as_mut(), batch);
            times.push(t0.elapsed());
            ran += out.len();
            for r in &out {
                if let Err(e) = r {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.message.clone());
                }
            }
            drop(out);
            if !peak_resettable {
                peak = peak.max(rss_bytes());
            }
        }
        let wall = started.elapsed();
        let kids = descendants(std::process::id());
        let cpu = (process_cpu_time() + kids.cpu).saturating_sub(cpu_before);
        cpu_total += cpu;
        wall_total += wall;
        if wall >= RATIO_WINDOW {
            ratios.push(cpu.as_secs_f64() / wall.as_secs_f64());
        }
        if peak_resettable {
            peak = peak.max(peak_rss_bytes());
        }
        times.sort();
        latency.push(ms(percentile(&times, 0.5)));
        p99.push(ms(percentile(&times, 0.99)));
        memory.push(round(
            (peak.saturating_sub(baseline_rss) + kids.rss) as f64 / (1024.0 * 1024.0),
            100.0,
        ));
    }
    // Cores busy while a batch runs is a property of the node; a busy machine only lowers what
    // is observed (the node gets less than it would use), so the largest ratio of any batch
    // size measured long enough is the best estimate. Short windows are too coarse (child
    // processes' CPU time is counted in clock ticks): then the ratio over all runs is used.
    let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let cores = match ratios.iter().copied().reduce(f64::max) {
        Some(r) => r,
        None if wall_total.is_zero() => 0.0,
        None => cpu_total.as_secs_f64() / wall_total.as_secs_f64(),
    }
    .min(cpus);
    let mut profile = DeviceProfile {
        p99_ms: Some(p99),
        memory_mb: Some(memory),
        cpu_cores: Some(round(cores, 1000.0)),
        ..DeviceProfile::new(sizes.to_vec(), latency)
    };
    let (mut generation, mut no_generation) = (None, None);
    if generates(&ctx.node) {
        match node.generator() {
            None => no_generation = Some("its node has no step-level interface".to_string()),
            Some(g) => {
                let measured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    measure_steps(g, pool, sizes, options)
                }));
                match measured {
                    Ok(Ok((steps, sequences))) => {
                        profile.step_ms = Some(steps.step_ms);
                        profile.prefill_ms = Some(steps.prefill_ms);
                        generation = Some(sequences);
                    }
                    Ok(Err(why)) => no_generation = Some(why),
                    Err(_) => no_generation = Some("the node panicked".to_string()),
                }
            }
        }
    }
    Ok(Measured {
        profile,
        all_failed: ran > 0 && failed == ran,
        first_error,
        generation,
        no_generation,
    })
}

/// A generating node's per-step costs, parallel to the batch sizes.
struct StepCosts {
    step_ms: Vec<f64>,
    prefill_ms: Vec<f64>,
}

/// Measure a generating node step by step: first the number of steps each item of `pool`
/// takes (every item once, `max_batch` at a time), then for each batch size b the median time
/// of one prefill of b fresh prompts and of one decode step while b sequences run. To keep b
/// running, a sequence that finishes is replaced at once by a new one (admitted and prefilled
/// untimed, as under continuous batching), so the steps timed see the mix of cache lengths
/// of a running batch; only steps in which all b ran and none finished are timed. The runs
/// per size follow the options (`min_runs` prefills and steps, `min_time`, `max_runs`).
fn measure_steps(
    g: &mut dyn Generate,
    pool: &[Item],
    sizes: &[u32],
    options: &ProfileOptions,
) -> Result<(StepCosts, Sequences), String> {
    let mut ids: SeqId = 0;
    let mut next_item = 0usize;
    // Admit the next item of the pool (cycling); an error when a whole pass of the pool failed.
    let mut admit = |g: &mut dyn Generate, ids: &mut SeqId| -> Result<SeqId, String> {
        for _ in 0..pool.len() {
            let item = pool[next_item % pool.len()].clone();
            next_item += 1;
            *ids += 1;
            if g.admit(*ids, item).is_ok() {
                return Ok(*ids);
            }
        }
        Err("every item failed to be admitted".to_string())
    };
    let running = |out: &[(SeqId, Step)]| -> Vec<SeqId> {
        out.iter()
            .filter(|(_, s)| matches!(s, Step::Running { .. }))
            .map(|(id, _)| *id)
            .collect()
    };

    // The lengths: every item of the pool once.
    let mut lengths: BTreeMap<u32, usize> = BTreeMap::new();
    let (mut prompt_sum, mut prompts) = (0usize, 0usize);
    let chunk = options.max_batch.max(1) as usize;
    for part in pool.chunks(chunk) {
        let mut seqs = Vec::new();
        for item in part {
            ids += 1;
            if let Ok(prompt) = g.admit(ids, item.clone()) {
                prompt_sum += prompt;
                prompts += 1;
                seqs.push(ids);
            }
        }
        if seqs.is_empty() {
            continue;
        }
        let mut live = running(&g.prefill(&seqs));
        let mut steps = 0u32;
        while !live.is_empty() {
            steps += 1;
            let out = g.step(&live);
            for (_, s) in &out {
                if let Step::Done(Ok(_)) = s {
                    *lengths.entry(steps).or_default() += 1;
                }
            }
            live = running(&out);
            if steps > 100_000 {
                return Err("a sequence ran for more than 100000 steps".to_string());
            }
        }
    }
    if lengths.is_empty() {
        return Err("no item generated successfully".to_string());
    }

    let enough = |n: usize, started: Instant| {
        n >= options.min_runs as usize
            && (started.elapsed() >= options.min_time
                || n >= options.max_runs.max(options.min_runs) as usize)
    };
    let (mut step_ms, mut prefill_ms) = (Vec::new(), Vec::new());
    for &b in sizes {
        // Steps with b running: all of them, and those in which none finished (a finishing
        // sequence may skip its share of the step's work).
        let (mut full, mut clean, mut fills) = (Vec::new(), Vec::new(), Vec::new());
        let started = Instant::now();
        while !(enough(full.len(), started) && enough(fills.len(), started)) {
            let mut seqs = Vec::with_capacity(b as usize);
            for _ in 0..b {
                seqs.push(admit(g, &mut ids)?);
            }
            let t0 = Instant::now();
            let out = g.prefill(&seqs);
            fills.push(t0.elapsed());
            let mut live = running(&out);
            let mut guard = 0usize;
            while !live.is_empty() {
                let t0 = Instant::now();
                let out = g.step(&live);
                let dt = t0.elapsed();
                let still = running(&out);
                if live.len() == b as usize {
                    full.push(dt);
                    if still.len() == live.len() {
                        clean.push(dt);
                    }
                }
                live = still;
                // Keep b running while more steps are wanted.
                if !enough(full.len(), started) {
                    let mut joining = Vec::new();
                    while live.len() + joining.len() < b as usize {
                        joining.push(admit(g, &mut ids)?);
                    }
                    if !joining.is_empty() {
                        live.extend(running(&g.prefill(&joining)));
                    }
                }
                guard += 1;
                if guard > 1_000_000 {
                    return Err("the measuring loop did not end".to_string());
                }
            }
        }
        let mut steps = if clean.is_empty() { full } else { clean };
        steps.sort();
        fills.sort();
        step_ms.push(ms(percentile(&steps, 0.5)));
        prefill_ms.push(ms(percentile(&fills, 0.5)));
    }
    Ok((
        StepCosts {
            step_ms,
            prefill_ms,
        },
        Sequences {
            lengths,
            prompt_tokens: prompt_sum as f64 / prompts.max(1) as f64,
        },
    ))
}

/// Run a batch, turning a panic inside the node into an error for each of its items (a panic is
/// a bug in the node, but it must not take the profiler down), and checking the node returned
/// one result per item.
fn guarded_run(
    node: &mut dyn crate::node::Node,
    batch: Vec<Item>,
) -> Vec<Result<Outputs, NodeError>> {
    let n = batch.len();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run_batch(batch)));
    match out {
        Ok(results) if results.len() == n => results,
        Ok(results) => {
            let e = NodeError::new(format!(
                "the node returned {} results for {n} items",
                results.len()
            ));
            vec![Err(e); n]
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            vec![Err(NodeError::new(format!("the node panicked: {what}"))); n]
        }
    }
}

/// A batch size's CPU/wall ratio counts toward `cpu_cores` only when measured this long.
const RATIO_WINDOW: Duration = Duration::from_millis(200);

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds, rounded to 0.1 µs and never zero (profiles require positive latencies).
fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 10_000.0).max(0.0001)
}

fn round(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

/// What running the sample requests through the plan gave.
struct Flows {
    /// The items each node received, by node id (one per element at a map node).
    items: BTreeMap<String, Vec<Item>>,
    /// Mean length of the mapped list at each map node, by node id.
    fanout: BTreeMap<String, f64>,
    /// Words for the notes: where the items came from.
    source: &'static str,
}

/// Run the sample requests (or synthetic ones) through every node in plan order, collecting
/// the items each node sees. A request that fails at a node simply yields nothing downstream.
fn propagate(
    plan: &Plan,
    registry: &Registry,
    options: &ProfileOptions,
) -> Result<Flows, ProfileError> {
    let (requests, source) = match &options.samples {
        Some(samples) => (
            decode_samples(
                plan,
                samples,
                crate::codec::EdgeContext {
                    base_dir: options.samples_dir.clone(),
                    images: crate::run::images::from_registry(registry, &options.base_dir),
                    allow: Vec::new(),
                },
            )?,
            "items from the sample requests",
        ),
        None => (
            synthetic_requests(plan)?,
            "items from synthesized requests run through the upstream nodes",
        ),
    };
    // Per request, the outputs of every node that succeeded on it.
    let mut outputs: Vec<BTreeMap<String, Outputs>> = vec![BTreeMap::new(); requests.len()];
    let mut items_of: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    let mut fanout = BTreeMap::new();
    let chunk = options.max_batch.max(1) as usize;
    for node in &plan.nodes {
        let in_types = parse_types(node, &node.in_types)?;
        // The call arguments of every request that has them all.
        let mut calls: Vec<(usize, Vec<Value>)> = Vec::new();
        'requests: for (r, request) in requests.iter().enumerate() {
            let mut args = Vec::with_capacity(node.args.len());
            for (i, arg) in node.args.iter().enumerate() {
                let v = if let Some(name) = &arg.input {
                    request.get(name).cloned()
                } else if let Some(id) = &arg.node {
                    outputs[r].get(id).and_then(|o| o.get(arg.port)).cloned()
                } else if let Some(lit) = &arg.value {
                    let ty = if node.map_over == Some(i) {
                        in_types.get(i).map(|t| DataType::List(Box::new(t.clone())))
                    } else {
                        in_types.get(i).cloned()
                    };
                    ty.and_then(|t| {
                        crate::codec::decode(lit, &t, &crate::codec::EdgeContext::plain()).ok()
                    })
                } else {
                    None
                };
                match v {
                    Some(v) => args.push(v),
                    None => continue 'requests,
                }
            }
            calls.push((r, args));
        }
        // Expand map nodes into one item per element.
        let mut items: Vec<(usize, Item)> = Vec::new();
        let mut lengths = Vec::new();
        let mut empty = Vec::new();
        for (r, args) in calls {
            match node.map_over {
                None => items.push((r, args)),
                Some(m) => {
                    let Some(Value::List(list)) = args.get(m) else {
                        continue;
                    };
                    lengths.push(list.len());
                    if list.is_empty() {
                        empty.push(r);
                    }
                    for element in list {
                        let mut item = args.clone();
                        item[m] = element.clone();
                        items.push((r, item));
                    }
                }
            }
        }
        if node.map_over.is_some() && !lengths.is_empty() {
            fanout.insert(
                node.id.clone(),
                round(
                    lengths.iter().sum::<usize>() as f64 / lengths.len() as f64,
                    1000.0,
                ),
            );
        }
        items_of.insert(
            node.id.clone(),
            items.iter().map(|(_, i)| i.clone()).collect(),
        );
        if items.is_empty() {
            for &r in &empty {
                outputs[r].insert(
                    node.id.clone(),
                    vec![Value::List(Vec::new()); node.out_types.len()],
                );
            }
            continue;
        }
        // Run them; a node that cannot be built here fails later, when it is measured.
        let ctx = NodeContext {
            node: node.clone(),
            replica: 0,
            base_dir: options.base_dir.clone(),
        };
        let Ok(mut instance) = registry.instantiate(&ctx) else {
            continue;
        };
        let mut results: Vec<(usize, Result<Outputs, NodeError>)> = Vec::with_capacity(items.len());
        for part in items.chunks(chunk) {
            let out = guarded_run(
                instance.as_mut(),
                part.iter().map(|(_, i)| i.clone()).collect(),
            );
            results.extend(part.iter().map(|(r, _)| *r).zip(out));
        }
        drop(instance);
        match node.map_over {
            None => {
                for (r, res) in results {
                    if let Ok(o) = res {
                        outputs[r].insert(node.id.clone(), o);
                    }
                }
            }
            Some(_) => {
                // Gather element outputs back into one list per output port, per request.
                let mut per_request: BTreeMap<usize, Option<Vec<Outputs>>> = BTreeMap::new();
                for (r, res) in results {
                    let slot = per_request.entry(r).or_insert_with(|| Some(Vec::new()));
                    match (slot.as_mut(), res) {
                        (Some(v), Ok(o)) => v.push(o),
                        _ => *slot = None,
                    }
                }
                for (r, elements) in per_request {
                    let Some(elements) = elements else { continue };
                    let ports = node.out_types.len();
                    let mut lists: Vec<Vec<Value>> = vec![Vec::new(); ports];
                    for e in elements {
                        for (p, v) in e.into_iter().enumerate().take(ports) {
                            lists[p].push(v);
                        }
                    }
                    outputs[r].insert(
                        node.id.clone(),
                        lists.into_iter().map(Value::List).collect(),
                    );
                }
                // A map over an empty list gives empty lists.
                for &r in &empty {
                    outputs[r].insert(
                        node.id.clone(),
                        vec![Value::List(Vec::new()); node.out_types.len()],
                    );
                }
            }
        }
    }
    Ok(Flows {
        items: items_of,
        fanout,
        source,
    })
}

fn parse_types(node: &PlanNode, types: &[String]) -> Result<Vec<DataType>, ProfileError> {
    types
        .iter()
        .map(|t| {
            t.parse::<DataType>()
                .map_err(|e| ProfileError::Plan(format!("node `{}`: bad type `{t}`: {e}", node.id)))
        })
        .collect()
}

/// Decode sample requests: JSON objects keyed by input name, defaults filled in.
fn decode_samples(
    plan: &Plan,
    samples: &[serde_json::Value],
    edge: crate::codec::EdgeContext,
) -> Result<Vec<BTreeMap<String, Value>>, ProfileError> {
    let mut requests = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let line = i + 1;
        let obj = sample.as_object().ok_or_else(|| ProfileError::Sample {
            line,
            message: "not a JSON object".into(),
        })?;
        let mut request = BTreeMap::new();
        for input in &plan.inputs {
            let ty: DataType = input.ty.parse().map_err(|e| {
                ProfileError::Plan(format!("input `{}`: bad type: {e}", input.name))
            })?;
            let json = obj
                .get(&input.name)
                .or(input.default.as_ref())
                .ok_or_else(|| ProfileError::Sample {
                    line,
                    message: format!("missing input `{}`", input.name),
                })?;
            let v = crate::codec::decode(json, &ty, &edge).map_err(|e| ProfileError::Sample {
                line,
                message: format!("input `{}`: {e}", input.name),
            })?;
            request.insert(input.name.clone(), v);
        }
        requests.push(request);
    }
    Ok(requests)
}

fn synthetic_requests(plan: &Plan) -> Result<Vec<BTreeMap<String, Value>>, ProfileError> {
    let mut requests = Vec::with_capacity(SYNTHETIC_REQUESTS);
    for i in 0..SYNTHETIC_REQUESTS {
        let mut request = BTreeMap::new();
        for input in &plan.inputs {
            let ty: DataType = input.ty.parse().map_err(|e| {
                ProfileError::Plan(format!("input `{}`: bad type: {e}", input.name))
            })?;
            let v = match &input.default {
                Some(d) => crate::codec::decode(d, &ty, &crate::codec::EdgeContext::plain())
                    .unwrap_or_else(|_| synthesize(&ty, i)),
                None => synthesize(&ty, i),
            };
            request.insert(input.name.clone(), v);
        }
        requests.push(request);
    }
    Ok(requests)
}

/// Items for a node made from its declared input types alone.
fn synthetic_items(node: &PlanNode) -> Result<Vec<Item>, ProfileError> {
    let types = parse_types(node, &node.in_types)?;
    Ok((0..SYNTHETIC_REQUESTS)
        .map(|i| types.iter().map(|t| synthesize(t, i)).collect())
        .collect())
}

/// A plausible value of type `ty`; `i` varies it between requests (so content-hashing nodes
/// such as `std.bench.fail` see different items).
pub fn synthesize(ty: &DataType, i: usize) -> Value {
    const WORDS: [&str; 8] = [
        "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs",
    ];
    match ty {
        DataType::Text => Value::Text(
            (0..6)
                .map(|k| WORDS[(i * 7 + k * 3) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" "),
        ),
        DataType::Int => Value::Int(i as i64),
        DataType::Float => Value::Float(i as f64 + 0.5),
        DataType::Bool => Value::Bool((i & 1) == 0),
        DataType::Json | DataType::Var(_) => Value::Json(serde_json::json!({"sample": i})),
        DataType::Bytes => Value::Bytes(Arc::new(
            (0..1024).map(|k| ((k * 31 + i * 17) % 251) as u8).collect(),
        )),
        DataType::Image => {
            let (width, height) = (64u32, 64u32);
            let rgb = (0..width * height * 3)
                .map(|k| ((k as usize + i * 13) % 256) as u8)
                .collect();
            Value::Image(Arc::new(ImageData { width, height, rgb }))
        }
        DataType::Box => Value::Box(BoxData {
            x: (i % 8) as f64 * 4.0,
            y: 2.0,
            w: 16.0,
            h: 8.0,
        }),
        DataType::List(elem) => Value::List((0..4).map(|k| synthesize(elem, i * 4 + k)).collect()),
        DataType::Tensor(dtype, dims) => {
            let shape: Vec<usize> = dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n as usize,
                    Dim::Sym(_) => 8,
                })
                .collect();
            let n: usize = shape.iter().product();
            let data = (0..n).map(|k| ((k + i) % 17) as f32 / 17.0).collect();
            Value::Tensor(Arc::new(TensorData {
                dtype: dtype.name().to_string(),
                shape,
                data,
            }))
        }
    }
}

// ---- what the process uses -------------------------------------------------------------

/// CPU time (user + system) of this whole process, all threads.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Resident set size of this process now.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page_size())
}

/// Peak RSS since the last reset (`VmHWM`).
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Reset the peak-RSS mark (Linux: writing 5 to clear_refs); false where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as u64
    } else {
        100
    }
}

/// CPU time and RSS of every process descended from `root` (exec programs and what they start).
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    cpu: Duration,
    rss: u64,
}

fn descendants(root: u32) -> Usage {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Usage::default();
    };
    // pid -> (ppid, cpu ticks, rss pages)
    let mut procs: BTreeMap<u32, (u32, u64, u64)> = BTreeMap::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start at field 3 (`state`).
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        procs.insert(pid, (num(1) as u32, num(11) + num(12), num(21)));
    }
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (&pid, &(ppid, _, _)) in &procs {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    let (mut ticks, mut pages) = (0u64, 0u64);
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if seen.insert(c) {
                let (_, t, r) = procs[&c];
                ticks += t;
                pages += r;
                stack.push(c);
            }
        }
    }
    Usage {
        cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64),
        rss: pages * page_size(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mars_plan::{
        Arg, BatchPolicy, BatchSpec, Implementation, NodePrediction, PipelinePrediction, PlanInput,
        PlanOrigin, PlanOutput,
    };

    #[test]
    fn batch_sizes_are_powers_of_two_and_the_bound() {
        assert_eq!(batch_sizes(1), vec![1]);
        assert_eq!(batch_sizes(8), vec![1, 2, 4, 8]);
        assert_eq!(batch_sizes(12), vec![1, 2, 4, 8, 12]);
        assert_eq!(batch_sizes(0), vec![1]);
    }

    #[test]
    fn annotated_batch_bounds_are_measured_exactly() {
        assert_eq!(sizes_for(8, &[]), vec![1, 2, 4, 8]);
        assert_eq!(sizes_for(8, &[12]), vec![1, 2, 4, 8, 12]);
        assert_eq!(sizes_for(32, &[12, 3]), vec![1, 2, 3, 4, 8, 12, 16, 32]);
        assert_eq!(sizes_for(4, &[64]), vec![1, 2, 4, 8, 16, 32, 64]);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d[..3], 0.99), Duration::from_millis(3));
    }

    #[test]
    fn synthesized_values_match_their_types() {
        for (ty, i) in [
            ("Tensor<f32, [1, H, 3]>", 0),
            ("List<List<Box>>", 2),
            ("Bytes", 1),
            ("Image", 3),
        ] {
            let t: DataType = ty.parse().expect("type");
            let v = synthesize(&t, i);
            let json = crate::codec::encode(&v, &crate::codec::EdgeContext::plain());
            if let Ok(json) = json {
                assert_eq!(
                    crate::codec::decode(&json, &t, &crate::codec::EdgeContext::plain()),
                    Ok(v.clone()),
                    "{ty}"
                );
            }
        }
        let Value::Tensor(t) = synthesize(&"Tensor<f32, [1, H, 3]>".parse().expect("type"), 0)
        else {
            panic!("tensor")
        };
        assert_eq!(t.shape, vec![1, 8, 3]);
    }

    /// A small node for the tests: splits text into words (a list), so a map node downstream
    /// has a fan-out to measure.
    fn test_registry() -> Registry {
        let mut r = Registry::new();
        r.builtin(
            "test.words",
            Arc::new(|_ctx: &NodeContext| {
                Ok(crate::node::per_item(|item: Item| {
                    let words = item[0]
                        .as_text()?
                        .split_whitespace()
                        .map(|w| Value::Text(w.to_string()))
                        .collect();
                    Ok(vec![Value::List(words)])
                }))
            }),
        );
        r.builtin(
            "test.upper",
            Arc::new(|_ctx: &NodeContext| {
                Ok(crate::node::per_item(|item: Item| {
                    std::thread::sleep(Duration::from_micros(200));
                    Ok(vec![Value::Text(item[0].as_text()?.to_uppercase())])
                }))
            }),
        );
        r
    }

    fn node(
        id: &str,
        builtin: &str,
        args: Vec<Arg>,
        map_over: Option<usize>,
        in_t: &str,
        out_t: &str,
    ) -> PlanNode {
        PlanNode {
            id: id.into(),
            kind: id.into(),
            implementation: Implementation {
                builtin: Some(builtin.into()),
                exec: None,
                model: None,
            },
            map_over,
            args,
            params: BTreeMap::new(),
            in_types: vec![in_t.into()],
            out_types: vec![out_t.into()],
            device: Device::Cpu,
            worker: "w0".into(),
            gpu: None,
            replicas: 1,
            replica_range: None,
            batch: BatchSpec {
                policy: BatchPolicy::Dynamic,
                max: 8,
                wait_ms: 1.0,
            },
            timeout_ms: None,
            predicted: NodePrediction {
                latency_ms: 1.0,
                p99_ms: 1.0,
                throughput: 1.0,
                utilization: 0.0,
            },
        }
    }

    fn plan() -> Plan {
        Plan {
            mars_plan: 1,
            workers: Vec::new(),
            budget: Vec::new(),
            gpu_shares: Vec::new(),
            mars_version: "test".into(),
            pipeline: "p".into(),
            inputs_of_plan: PlanOrigin {
                source: "p.mars".into(),
                source_hash: "sha256:0".into(),
                profile_hash: None,
                target_hash: None,
            },
            inputs: vec![PlanInput {
                name: "text".into(),
                ty: "Text".into(),
                default: None,
            }],
            outputs: vec![PlanOutput {
                name: "out".into(),
                ty: "List<Text>".into(),
                from: Arg::node("up", 0),
            }],
            nodes: vec![
                node(
                    "words",
                    "test.words",
                    vec![Arg::input("text")],
                    None,
                    "Text",
                    "List<Text>",
                ),
                node(
                    "up",
                    "test.upper",
                    vec![Arg::node("words", 0)],
                    Some(0),
                    "Text",
                    "Text",
                ),
            ],
            rate: None,
            predicted: PipelinePrediction {
                throughput: 1.0,
                latency_p50_ms: 1.0,
                latency_p99_ms: 1.0,
                bottleneck: "up".into(),
            },
            slos: vec![],
            notes: vec![],
            inline: vec![],
        }
    }

    fn quick() -> ProfileOptions {
        ProfileOptions {
            max_batch: 4,
            min_runs: 3,
            min_time: Duration::ZERO,
            max_runs: 3,
            ..ProfileOptions::default()
        }
    }

    #[test]
    fn profiles_every_kind_and_measures_fanout_from_samples() {
        let samples = vec![
            serde_json::json!({"text": "a b c"}),
            serde_json::json!({"text": "d e f g h"}),
        ];
        let options = ProfileOptions {
            samples: Some(samples),
            ..quick()
        };
        let mut steps = Vec::new();
        let report = profile_plan(&plan(), &test_registry(), &options, &mut |p| {
            steps.push((p.kind.to_string(), p.batch, p.done, p.total))
        })
        .expect("profiles");
        let p = &report.profile;
        assert_eq!(p.nodes.keys().collect::<Vec<_>>(), vec!["up", "words"]);
        let up = p.nodes["up"].cpu.as_ref().expect("cpu");
        // Up to --max-batch (4) and the plan's own bound (`batch.max` 8).
        assert_eq!(up.batch, vec![1, 2, 4, 8]);
        // Each item sleeps 200 µs, so a batch of 4 takes at least 0.8 ms.
        assert!(up.latency_ms[2] >= 0.8, "{:?}", up.latency_ms);
        assert!(p.nodes["up"].gpu.is_none());
        assert_eq!(p.fanout.get("up"), Some(&4.0));
        assert_eq!(steps.len(), 8);
        assert_eq!(steps.last().map(|s| (s.2, s.3)), Some((7, 8)));
        // The profile is valid by the planner's own rules.
        let text = p.to_yaml();
        assert_eq!(Profile::from_yaml(&text, "t.profile.yaml").as_ref(), Ok(p));
    }

    #[test]
    fn without_samples_there_is_no_fanout() {
        let report =
            profile_plan(&plan(), &test_registry(), &quick(), &mut |_| {}).expect("profiles");
        assert!(report.profile.fanout.is_empty());
        assert!(report.profile.nodes["up"].cpu.is_some());
    }

    #[test]
    fn bad_samples_name_their_line() {
        let options = ProfileOptions {
            samples: Some(vec![
                serde_json::json!({"text": "ok"}),
                serde_json::json!({"text": 3}),
            ]),
            ..quick()
        };
        let e = profile_plan(&plan(), &test_registry(), &options, &mut |_| {}).expect_err("fails");
        assert!(matches!(e, ProfileError::Sample { line: 2, .. }), "{e}");
    }

    #[test]
    fn a_kind_that_cannot_be_built_is_an_error() {
        let mut p = plan();
        p.nodes[1].implementation.builtin = Some("test.missing".into());
        let e = profile_plan(&p, &test_registry(), &quick(), &mut |_| {}).expect_err("fails");
        assert!(
            matches!(&e, ProfileError::Instantiate { node, .. } if node == "up"),
            "{e}"
        );
    }

    #[test]
    fn nodes_of_one_kind_with_other_params_get_entries_of_their_own() {
        let mut r = test_registry();
        r.builtin(
            "test.sleep",
            Arc::new(|ctx: &NodeContext| {
                let us = ctx
                    .node
                    .params
                    .get("us")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                Ok(crate::node::per_item(move |item: Item| {
                    std::thread::sleep(Duration::from_micros(us));
                    Ok(item)
                }))
            }),
        );
        let mut p = plan();
        p.nodes.truncate(1);
        for (id, us) in [("a", 100), ("b", 3000), ("c", 3000), ("d", 100)] {
            let mut n = node(
                id,
                "test.sleep",
                vec![Arg::input("text")],
                None,
                "Text",
                "Text",
            );
            n.kind = "sleep".into();
            n.params.insert("us".into(), us.into());
            p.nodes.push(n);
        }
        let report = profile_plan(&p, &r, &quick(), &mut |_| {}).expect("profiles");
        let keys: Vec<&str> = report.profile.nodes.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["sleep", "sleep@b", "sleep@c", "words"]);
        let lat = |k: &str| {
            report.profile.nodes[k]
                .cpu
                .as_ref()
                .expect("cpu")
                .latency_ms[0]
        };
        // sleep@b and sleep@c are one measurement of the 3 ms variant.
        assert_eq!(lat("sleep@b"), lat("sleep@c"));
        assert!(lat("sleep@b") >= 3.0, "{}", lat("sleep@b"));
        assert!(
            report.notes.iter().any(|n| n.contains("`a` and `b`")),
            "{:?}",
            report.notes
        );
    }

    #[test]
    fn a_panicking_node_is_measured_not_fatal() {
        let mut r = test_registry();
        r.builtin(
            "test.panics",
            Arc::new(|_ctx: &NodeContext| {
                Ok(crate::node::per_item(|_item: Item| panic!("bug in node")))
            }),
        );
        let mut p = plan();
        p.nodes[1].implementation.builtin = Some("test.panics".into());
        let report = profile_plan(&p, &r, &quick(), &mut |_| {}).expect("profiles");
        assert!(report.profile.nodes["up"].cpu.is_some());
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("every item failed") && n.contains("bug in node")),
            "{:?}",
            report.notes
        );
    }

    #[test]
    fn descendants_see_child_processes() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        // Right after the spawn the child may not have mapped its program yet (it was seen
        // with no resident pages on a loaded machine): look again, a bounded number of times.
        let mut u = descendants(std::process::id());
        for _ in 0..10_000 {
            if u.rss > 0 {
                break;
            }
            std::thread::yield_now();
            u = descendants(std::process::id());
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(u.rss > 0, "{u:?}");
    }

    /// A generating node for the tests: item `n` (an Int) runs for `n` steps; `n ≤ 0` fails at
    /// admission. Whole batches run every item to its end.
    struct Counter {
        left: BTreeMap<SeqId, i64>,
        with_generator: bool,
    }

    impl crate::node::Node for Counter {
        fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
            batch
                .into_iter()
                .map(|i| match i.first() {
                    Some(Value::Int(n)) if *n > 0 => Ok(vec![Value::Int(*n)]),
                    _ => Err(NodeError::new("not a positive Int")),
                })
                .collect()
        }
        fn generator(&mut self) -> Option<&mut dyn Generate> {
            if self.with_generator {
                Some(self)
            } else {
                None
            }
        }
    }

    impl Generate for Counter {
        fn admit(&mut self, seq: SeqId, item: Item) -> Result<usize, NodeError> {
            match item.first() {
                Some(Value::Int(n)) if *n > 0 => {
                    self.left.insert(seq, *n);
                    Ok(2)
                }
                _ => Err(NodeError::new("not a positive Int")),
            }
        }
        fn prefill(&mut self, seqs: &[SeqId]) -> Vec<(SeqId, Step)> {
            seqs.iter()
                .map(|&s| (s, Step::Running { cached: 2 }))
                .collect()
        }
        fn step(&mut self, seqs: &[SeqId]) -> Vec<(SeqId, Step)> {
            seqs.iter()
                .map(|&s| {
                    let left = self.left.get_mut(&s).expect("admitted");
                    *left -= 1;
                    if *left == 0 {
                        self.left.remove(&s);
                        (s, Step::Done(Ok(vec![Value::Int(0)])))
                    } else {
                        (s, Step::Running { cached: 3 })
                    }
                })
                .collect()
        }
        fn preempt(&mut self, _seq: SeqId) -> usize {
            0
        }
        fn max_sequence_tokens(&self) -> usize {
            64
        }
    }

    fn counter_plan(generate: bool) -> Plan {
        let mut p = plan();
        let mut n = node("gen", "unused", vec![Arg::input("n")], None, "Int", "Int");
        n.kind = "Gen".into();
        n.implementation = Implementation {
            builtin: None,
            exec: None,
            model: Some(mars_plan::ModelImpl {
                arch: "test.counter".into(),
                config: [("generate".to_string(), serde_json::Value::Bool(generate))]
                    .into_iter()
                    .collect(),
            }),
        };
        p.inputs = vec![PlanInput {
            name: "n".into(),
            ty: "Int".into(),
            default: None,
        }];
        p.outputs = vec![PlanOutput {
            name: "out".into(),
            ty: "Int".into(),
            from: Arg::node("gen", 0),
        }];
        p.nodes = vec![n];
        p
    }

    fn counter_registry(with_generator: bool) -> Registry {
        let mut r = Registry::new();
        r.model(
            "test.counter",
            Arc::new(move |_ctx: &NodeContext| {
                Ok(Box::new(Counter {
                    left: BTreeMap::new(),
                    with_generator,
                }) as Box<dyn crate::node::Node>)
            }),
        );
        r
    }

    #[test]
    fn a_generating_model_is_measured_step_by_step() {
        let samples = [1, 3, 3, 0, 6]
            .iter()
            .map(|n| serde_json::json!({ "n": n }))
            .collect();
        let options = ProfileOptions {
            samples: Some(samples),
            ..quick()
        };
        let report = profile_plan(
            &counter_plan(true),
            &counter_registry(true),
            &options,
            &mut |_| {},
        )
        .expect("profiles");
        let kind = &report.profile.nodes["Gen"];
        // The item that fails admission is not counted; the others took 1, 3, 3 and 6 steps.
        let h = kind.output_tokens.as_ref().expect("lengths");
        assert_eq!(h.tokens, vec![1, 3, 6]);
        assert_eq!(h.share, vec![0.25, 0.5, 0.25]);
        assert_eq!(kind.prompt_tokens, Some(2.0));
        let cpu = kind.cpu.as_ref().expect("cpu");
        assert_eq!(cpu.batch, vec![1, 2, 4, 8]);
        for list in [&cpu.step_ms, &cpu.prefill_ms] {
            let list = list.as_ref().expect("per step");
            assert_eq!(list.len(), 4);
            assert!(list.iter().all(|&v| v > 0.0), "{list:?}");
        }
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("its 4 sequences took 3.25 steps on average")),
            "{:?}",
            report.notes
        );
        let text = report.profile.to_yaml();
        assert_eq!(
            Profile::from_yaml(&text, "t.profile.yaml").as_ref(),
            Ok(&report.profile)
        );
    }

    #[test]
    fn without_generate_or_a_generator_only_whole_batches_are_measured() {
        let options = ProfileOptions {
            samples: Some(vec![serde_json::json!({"n": 2})]),
            ..quick()
        };
        // `generate = false`: nothing per step, no note.
        let report = profile_plan(
            &counter_plan(false),
            &counter_registry(true),
            &options,
            &mut |_| {},
        )
        .expect("profiles");
        let kind = &report.profile.nodes["Gen"];
        assert!(kind.output_tokens.is_none());
        assert!(kind.cpu.as_ref().is_some_and(|c| c.step_ms.is_none()));
        // `generate = true` but no step-level interface: a note says so.
        let report = profile_plan(
            &counter_plan(true),
            &counter_registry(false),
            &options,
            &mut |_| {},
        )
        .expect("profiles");
        assert!(report.profile.nodes["Gen"].output_tokens.is_none());
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("not measured per step (its node has no step-level interface)")),
            "{:?}",
            report.notes
        );
    }
}
