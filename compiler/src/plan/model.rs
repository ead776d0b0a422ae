//! The cost model (SPEC.md, "The cost model"): for every node the options it may take (device,
//! placement, batch size) with their measured costs, and the resources of the target. Building
//! it checks the pipeline against the profile and the target; it does not search.

use std::collections::BTreeSet;

use mars_plan::{BatchPolicy, Device, DeviceProfile, Profile, Target};
use petgraph::stable_graph::NodeIndex;
use petgraph::Direction;

use super::error::PlanError;
use super::generation::{self, Lengths, StepCosts};
use super::PlanOptions;
use crate::ir::{BatchHint, DeviceHint, Implementation, Literal, Pipeline, SloKind};

/// The most replicas any node may have.
pub const MAX_REPLICAS: u32 = 64;
/// Latency added to a path each time it crosses from one worker to another, in ms.
pub const CROSS_WORKER_MS: f64 = 1.0;
/// The largest throughput the planner reports (requests/s), for pipelines that nothing bounds.
pub const MAX_THROUGHPUT: f64 = 1.0e9;
/// Without a profile, every node is assumed to take this long per item (ms), unless its
/// declaration states a cost (`@cost`, SPEC 2.4.8).
pub const DEFAULT_ITEM_MS: f64 = 1.0;
/// Without a profile, a `@batchable` node without a `@batch` annotation takes up to this many
/// queued items per batch, without waiting.
pub const UNPROFILED_BATCH_MAX: u32 = 256;
/// A CPU builtin at most this costly per item (ms) runs inline on its worker's thread ...
pub const INLINE_ITEM_MS: f64 = 0.02;
/// ... when its batches also take at most this long (ms).
pub const INLINE_BATCH_MS: f64 = 0.5;

/// One way to run a node: where, with which batch policy and batch size.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeOption {
    pub device: Device,
    /// Index into the target's workers.
    pub worker: usize,
    /// Index into [`CostModel::gpus`], for a GPU option.
    pub gpu: Option<usize>,
    /// `none` (b = 1), `dynamic` (b > 1) or, for a generating model, `continuous` (at most b
    /// sequences at once). Annotations override it when the plan is written.
    pub policy: BatchPolicy,
    pub batch: u32,
    /// Median and p99 time an item spends in the node once its batch starts (ms): a batch's
    /// latency, or for a generating model under `continuous` a sequence's.
    pub latency_ms: f64,
    pub p99_ms: f64,
    /// Replica time per item (ms): L/b for a batch of b; the per-step formulas of SPEC 2.4.7
    /// for a generating model.
    pub item_ms: f64,
    /// Costed per decode step (a generating model whose profile has `step_ms`).
    pub per_step: bool,
    /// Memory of one replica (MB).
    pub memory_mb: f64,
    /// Cores busy while a batch runs (0 on a GPU unless the profile says otherwise).
    pub cores: f64,
    /// Busy replicas per request/s: m·`item_ms`/1000 (m·L/(1000·b) for a batch).
    pub per_request: f64,
    /// GPU share busy per request/s: `per_request`, times the profile's `sm_share` on a GPU
    /// shared through MPS (nodes run side by side there); 0 on the cpu (SPEC 10.7).
    pub gpu_load: f64,
    /// The share of a whole GPU's compute a batch occupies (the profile's `sm_share`, 1 by
    /// default); on a MIG instance of s slices a node runs max(1, sm_share·7/s) times slower.
    pub sm_share: f64,
}

impl NodeOption {
    /// The time a batch takes to fill at `items_per_s` (ms): only `dynamic` batches of more
    /// than one wait to fill; `continuous` starts each sequence at the next step.
    pub fn fill_ms(&self, items_per_s: f64) -> f64 {
        match self.policy {
            BatchPolicy::Dynamic => super::evaluate::fill_ms(self.batch, items_per_s),
            BatchPolicy::None | BatchPolicy::Continuous => 0.0,
        }
    }
}

/// A node as the cost model sees it.
#[derive(Debug, Clone)]
pub struct ModelNode {
    pub index: NodeIndex,
    pub id: String,
    /// Mean items per request (the fan-out at a map node; 1 elsewhere).
    pub fanout: f64,
    /// `@replicas(N)`.
    pub fixed_replicas: Option<u32>,
    /// `@batch(max = N, …)` or `@batch(continuous, max = N)`: the user asked for batching, so
    /// the search's latency stage keeps the batch the throughput stage chose.
    pub batch_annotated: bool,
    pub options: Vec<NodeOption>,
    /// Positions (in [`CostModel::nodes`]) of the nodes feeding this one.
    pub preds: Vec<usize>,
    /// A builtin that does not generate: it may run inline when cheap.
    pub builtin_cpu: bool,
    /// For a generating model costed per step: its output lengths and what each policy would
    /// give, allowed or not (for `--explain`).
    pub generation: Option<Generation>,
}

/// A generating model costed per step, as `--explain` shows it.
#[derive(Debug, Clone)]
pub struct Generation {
    pub lengths: Lengths,
    /// Every policy at every measured batch size on every device measured per step.
    pub predictions: Vec<PolicyPrediction>,
}

/// One policy at one batch size on one device, and why the planner may not use it (`None`
/// when it may).
#[derive(Debug, Clone)]
pub struct PolicyPrediction {
    pub device: Device,
    pub policy: BatchPolicy,
    pub batch: u32,
    pub cost: generation::PolicyCost,
    pub ruled_out: Option<String>,
}

/// A CPU pool: one worker.
#[derive(Debug, Clone)]
pub struct WorkerResource {
    pub name: String,
    pub cpus: f64,
    /// `None` when the target does not state the worker's memory.
    pub memory_mb: Option<f64>,
}

/// One GPU.
#[derive(Debug, Clone)]
pub struct GpuResource {
    pub name: String,
    pub worker: usize,
    pub share: f64,
    pub memory_mb: f64,
    /// The share of the physical GPU's compute it has: 1, or s/7 for a MIG instance of s
    /// compute slices (SPEC 10.7).
    pub speed: f64,
    /// Shared through MPS: its load is Σ u·`sm_share` instead of Σ u.
    pub mps: bool,
    /// The physical GPU (the target's name) and, for a MIG instance, its profile.
    pub device: String,
    pub mig: Option<String>,
}

/// What the planner is asked to achieve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objectives {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// `slo throughput >= N/s`: sustain N with the fewest resources.
    pub throughput: Option<f64>,
    /// `marsc compile --rate R`: the offered load; sustain it with the lowest p99.
    pub rate: Option<f64>,
}

impl Objectives {
    /// The offered load the plan is planned for (SPEC 2.4.10): `--rate R`, else the throughput
    /// SLO's N; `None` plans for saturation.
    pub fn load(&self) -> Option<f64> {
        self.rate.or(self.throughput)
    }

    /// The requests/s the plan must sustain: the larger of `--rate` and the throughput SLO.
    pub fn required(&self) -> Option<f64> {
        match (self.rate, self.throughput) {
            (Some(r), Some(n)) => Some(r.max(n)),
            (r, n) => r.or(n),
        }
    }
}

/// The whole search space of one pipeline on one target.
#[derive(Debug, Clone)]
pub struct CostModel {
    /// In the pipeline's topological order.
    pub nodes: Vec<ModelNode>,
    pub workers: Vec<WorkerResource>,
    pub gpus: Vec<GpuResource>,
    pub objectives: Objectives,
    /// Planned without a profile: costs are declared or assumed.
    pub unprofiled: bool,
    /// The runtime's own CPU, from the profile's `runtime` section (SPEC 2.4.9).
    pub runtime: Option<mars_plan::RuntimeProfile>,
}

impl CostModel {
    /// The most replicas a node may have in this pipeline: [`MAX_REPLICAS`], fewer in a
    /// pipeline so large that the replica threads of all its nodes would pass
    /// [`mars_plan::limits::MAX_REPLICA_THREADS`] (a 10,000-node chain gets one replica per
    /// node), so that a plan the planner writes can always be run (SPEC 2.5, 7.1).
    pub fn max_replicas(&self) -> u32 {
        let per_node = mars_plan::limits::MAX_REPLICA_THREADS / self.nodes.len().max(1);
        u32::try_from(per_node)
            .unwrap_or(u32::MAX)
            .clamp(1, MAX_REPLICAS)
    }

    /// Cores the runtime spends per request/s on the first worker outside the nodes (reading,
    /// parsing, admitting, encoding, writing).
    pub fn request_cores(&self) -> f64 {
        self.runtime.map_or(0.0, |r| r.request_us / 1e6)
    }

    /// Cores the runtime spends per request/s on node `i`'s worker when it runs on `opt`: a
    /// hop per item, and for a node on replica threads a hand-off per batch (under `none`
    /// items are handed over in chunks, counted as [`NONE_CHUNK`] items each).
    pub fn runtime_cores(&self, i: usize, opt: &NodeOption) -> f64 {
        let Some(r) = self.runtime else { return 0.0 };
        let node = &self.nodes[i];
        let inline = node.builtin_cpu && cheap(opt);
        let per_batch = if inline {
            0.0
        } else if opt.policy == BatchPolicy::None {
            r.batch_us / f64::from(NONE_CHUNK)
        } else {
            r.batch_us / f64::from(opt.batch.max(1))
        };
        node.fanout * (r.hop_us + per_batch) / 1e6
    }
}

/// The items a hand-off under `none` is assumed to carry, for the runtime's cost.
pub const NONE_CHUNK: u32 = 16;

/// Whether an option is cheap enough to run inline (for a CPU builtin).
pub fn cheap(opt: &NodeOption) -> bool {
    opt.device == Device::Cpu
        && opt.policy != BatchPolicy::Continuous
        && opt.item_ms <= INLINE_ITEM_MS
        && opt.latency_ms <= INLINE_BATCH_MS
}

impl CostModel {
    /// Build the options of every node from the profile (or the defaults, without one) and the
    /// target, honouring the annotations. Collects every error rather than stopping at the first.
    pub fn build(
        pipeline: &Pipeline,
        profile: Option<&Profile>,
        target: &Target,
        options: &PlanOptions,
    ) -> Result<CostModel, Vec<PlanError>> {
        let workers: Vec<WorkerResource> = target
            .workers
            .iter()
            .map(|w| WorkerResource {
                name: w.name.clone(),
                cpus: w.cpus,
                memory_mb: (w.memory_gb > 0.0).then_some(w.memory_gb * 1024.0),
            })
            .collect();
        let mut gpus = Vec::new();
        for (wi, w) in target.workers.iter().enumerate() {
            for g in &w.gpus {
                gpus.extend(gpu_resources(g, wi));
            }
        }

        let order = pipeline.topo_order();
        let position = |n: NodeIndex| {
            order
                .iter()
                .position(|&m| m == n)
                .expect("every node is in the order")
        };
        let mut errors = Vec::new();
        let mut nodes = Vec::with_capacity(order.len());
        for &index in &order {
            let node = &pipeline.graph[index];
            let fanout = if node.map_over.is_some() {
                profile
                    .and_then(|p| p.fanout.get(&node.id).copied())
                    .unwrap_or(1.0)
            } else {
                1.0
            };
            let mut preds: Vec<usize> = pipeline
                .graph
                .neighbors_directed(index, Direction::Incoming)
                .map(position)
                .collect();
            preds.sort_unstable();
            preds.dedup();
            match node_options(pipeline, index, fanout, profile, &workers, &gpus, options) {
                Ok((opts, generation)) => nodes.push(ModelNode {
                    index,
                    id: node.id.clone(),
                    fanout,
                    fixed_replicas: node.annotations.replicas.map(|r| r.max(1)),
                    batch_annotated: matches!(
                        node.annotations.batch,
                        Some(BatchHint::Dynamic { .. } | BatchHint::Continuous { .. })
                    ),
                    options: opts,
                    preds,
                    builtin_cpu: matches!(node.implementation, Implementation::Builtin(_))
                        && !node.generates,
                    generation,
                }),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut objectives = Objectives {
            rate: options.rate,
            ..Objectives::default()
        };
        for slo in &pipeline.slos {
            match slo.kind {
                SloKind::LatencyP50Ms(ms) => {
                    objectives.p50_ms = Some(objectives.p50_ms.map_or(ms, |o: f64| o.min(ms)))
                }
                SloKind::LatencyP99Ms(ms) => {
                    objectives.p99_ms = Some(objectives.p99_ms.map_or(ms, |o: f64| o.min(ms)))
                }
                SloKind::ThroughputPerS(n) => {
                    objectives.throughput = Some(objectives.throughput.map_or(n, |o: f64| o.max(n)))
                }
            }
        }
        Ok(CostModel {
            nodes,
            workers,
            gpus,
            objectives,
            unprofiled: profile.is_none(),
            runtime: profile.and_then(|p| p.runtime),
        })
    }
}

/// The devices a target's GPU offers the planner: the GPU itself, or one per MIG instance,
/// named `GPU.migK` (K counts the instances in declaration order), each with its compute
/// slices and memory.
pub fn gpu_resources(g: &mars_plan::Gpu, worker: usize) -> Vec<GpuResource> {
    if g.mig.is_empty() {
        return vec![GpuResource {
            name: g.name.clone(),
            worker,
            share: g.share,
            memory_mb: g.memory_gb * 1024.0,
            speed: 1.0,
            mps: g.mps,
            device: g.name.clone(),
            mig: None,
        }];
    }
    let mut out = Vec::new();
    for m in &g.mig {
        // Checked when the target loads.
        let (slices, gb) = mars_plan::MigSlice::parse(&m.profile).unwrap_or((1, 0.0));
        for _ in 0..m.count {
            out.push(GpuResource {
                name: format!("{}.mig{}", g.name, out.len()),
                worker,
                share: g.share,
                memory_mb: gb * 1024.0,
                speed: f64::from(slices) / f64::from(mars_plan::MIG_SLICES),
                mps: false,
                device: g.name.clone(),
                mig: Some(m.profile.clone()),
            });
        }
    }
    out
}

/// The options of one node (and, for a generating model costed per step, its output length
/// distribution), or why it has none.
fn node_options(
    pipeline: &Pipeline,
    index: NodeIndex,
    fanout: f64,
    profile: Option<&Profile>,
    workers: &[WorkerResource],
    gpus: &[GpuResource],
    options: &PlanOptions,
) -> Result<(Vec<NodeOption>, Option<Generation>), PlanError> {
    let node = &pipeline.graph[index];
    let ann = &node.annotations;
    let device_span = ann.device_span.or(Some(node.span));
    let max_batch: Option<u32> = match &ann.batch {
        Some(BatchHint::None) => Some(1),
        Some(BatchHint::Dynamic { max, .. }) | Some(BatchHint::Continuous { max }) => *max,
        None => None,
    };

    if ann.device == Some(DeviceHint::Gpu) && gpus.is_empty() {
        return Err(PlanError::DeviceUnavailable {
            node: node.id.clone(),
            span: device_span,
        });
    }
    // Only a kind with a GPU implementation (`@gpu` on its arch or fn) may go to a GPU.
    if ann.device == Some(DeviceHint::Gpu) && !node.gpu {
        return Err(PlanError::NoGpuImplementation {
            node: node.id.clone(),
            kind: node.kind.clone(),
            implementation: match &node.implementation {
                Implementation::Model { arch, .. } => format!("arch `{arch}`"),
                Implementation::Builtin(id) => format!("builtin `{id}`"),
                Implementation::Exec(cmd) => format!("exec `{cmd}`"),
            },
            span: device_span,
        });
    }
    // The devices, with their measurements: from the profile, or the defaults.
    let mut measured: Vec<(Device, DeviceProfile)> = Vec::new();
    // A generating model's output lengths and mean prompt length, where profiled.
    let mut sequences: Option<(Lengths, f64)> = None;
    match profile {
        Some(profile) => {
            // A node whose parameters differ from its kind's first node is profiled on its own.
            let own_key = format!("{}@{}", node.kind, node.id);
            let found_key = if profile.nodes.contains_key(&own_key) {
                own_key
            } else {
                node.kind.clone()
            };
            let Some(kp) = profile.nodes.get(&found_key) else {
                return Err(missing_profile(options, &["nodes", &node.kind], node));
            };
            if node.generates {
                sequences = kp
                    .output_tokens
                    .as_ref()
                    .and_then(Lengths::from_histogram)
                    .map(|l| (l, kp.prompt_tokens.unwrap_or(0.0)));
            }
            let wanted: &[Device] = match ann.device {
                Some(DeviceHint::Cpu) => &[Device::Cpu],
                Some(DeviceHint::Gpu) => &[Device::Gpu],
                _ if !node.gpu => &[Device::Cpu],
                _ => &[Device::Cpu, Device::Gpu],
            };
            for &d in wanted {
                let dp = if d == Device::Cpu { &kp.cpu } else { &kp.gpu };
                if let Some(dp) = dp {
                    measured.push((d, dp.clone()));
                }
            }
            if measured.is_empty() {
                let dev = if wanted == [Device::Gpu] {
                    "gpu"
                } else {
                    "cpu"
                };
                return Err(missing_profile(options, &["nodes", &found_key, dev], node));
            }
        }
        None => {
            let device = if ann.device == Some(DeviceHint::Gpu) {
                Device::Gpu
            } else {
                Device::Cpu
            };
            let b = max_batch.unwrap_or(1).max(1);
            let mut dp = match node.declared.cost {
                Some(c) => {
                    let mut dp =
                        DeviceProfile::new(vec![b], vec![c.batch_ms + c.item_ms * f64::from(b)]);
                    dp.cpu_cores = Some(c.cores);
                    dp
                }
                None => DeviceProfile::new(vec![b], vec![DEFAULT_ITEM_MS * f64::from(b)]),
            };
            if device == Device::Gpu {
                dp.cpu_cores = None;
            }
            measured.push((device, dp));
        }
    }

    // `kv_tokens` in the model's config bounds the KV cache of one replica's running
    // sequences: continuous batches that would need more on average are not offered.
    let kv_tokens = match &node.implementation {
        Implementation::Model { config, .. } => match config.get("kv_tokens") {
            Some(Literal::Int(k)) if *k > 0 => Some(*k as f64),
            _ => None,
        },
        _ => None,
    };
    let mut out = Vec::new();
    let mut rejected_batches = BTreeSet::new();
    for (device, dp) in &measured {
        let per_step = sequences
            .as_ref()
            .and_then(|(l, prompt)| StepCosts::from_profile(dp).map(|c| (c, l, *prompt)));
        let p99 = dp.p99_ms.as_ref().unwrap_or(&dp.latency_ms);
        let zeros = vec![0.0; dp.batch.len()];
        let mem = dp.memory_mb.as_ref().unwrap_or(&zeros);
        let cores = dp
            .cpu_cores
            .unwrap_or(if *device == Device::Cpu { 1.0 } else { 0.0 });
        let placements: Vec<(usize, Option<usize>)> = match device {
            Device::Cpu => (0..workers.len()).map(|w| (w, None)).collect(),
            Device::Gpu => gpus
                .iter()
                .enumerate()
                .map(|(g, gr)| (gr.worker, Some(g)))
                .collect(),
        };
        for (k, &b) in dp.batch.iter().enumerate() {
            if max_batch.is_some_and(|m| b > m) {
                rejected_batches.insert(b);
                continue;
            }
            let (Some(&l), Some(&p), Some(&m)) = (dp.latency_ms.get(k), p99.get(k), mem.get(k))
            else {
                continue; // mismatched lists are rejected when the profile loads
            };
            // (policy, median, p99, replica ms per item, busy replicas per request/s) of each
            // way to run batches of b.
            let mut ways: Vec<(BatchPolicy, f64, f64, f64, f64)> = Vec::new();
            let per = |item_ms: f64| fanout * item_ms / 1000.0;
            match &per_step {
                Some((costs, lengths, prompt)) => {
                    let continuous_hint = matches!(ann.batch, Some(BatchHint::Continuous { .. }));
                    if !continuous_hint {
                        let c = generation::batched(costs, lengths, b);
                        let policy = if b == 1 {
                            BatchPolicy::None
                        } else {
                            BatchPolicy::Dynamic
                        };
                        ways.push((policy, c.latency_ms, c.p99_ms, c.item_ms, per(c.item_ms)));
                    }
                    let may_continue = continuous_hint || (ann.batch.is_none() && b > 1);
                    let kv_fits = b == 1
                        || kv_tokens
                            .is_none_or(|kv| f64::from(b) * (prompt + lengths.mean()) <= kv);
                    if may_continue && kv_fits {
                        let c = generation::continuous(costs, lengths, b);
                        let per_request = per(c.item_ms);
                        ways.push((
                            BatchPolicy::Continuous,
                            c.latency_ms,
                            c.p99_ms,
                            c.item_ms,
                            per_request,
                        ));
                    }
                }
                None => {
                    // Whole batches (SPEC 2.4): also a generating model without step costs,
                    // where `continuous` runs like a batch that does not wait to fill.
                    let policy = match ann.batch {
                        Some(BatchHint::Continuous { .. }) => BatchPolicy::Continuous,
                        _ if b == 1 => BatchPolicy::None,
                        _ => BatchPolicy::Dynamic,
                    };
                    let per_request = fanout * l / (1000.0 * f64::from(b));
                    ways.push((policy, l, p, l / f64::from(b), per_request));
                }
            }
            let sm_share = if *device == Device::Gpu {
                dp.sm_share.unwrap_or(1.0)
            } else {
                1.0
            };
            for (policy, l, p, item_ms, per_request) in ways {
                for &(worker, gpu) in &placements {
                    // A MIG instance with less compute than the node fills runs it slower;
                    // MPS lets nodes that fill part of a GPU run side by side.
                    let (slow, load) = match gpu.map(|g| &gpus[g]) {
                        Some(gr) => (
                            (sm_share / gr.speed).max(1.0),
                            if gr.mps { sm_share } else { 1.0 },
                        ),
                        None => (1.0, 0.0),
                    };
                    let (l, p, item_ms, per_request) =
                        (l * slow, p * slow, item_ms * slow, per_request * slow);
                    out.push(NodeOption {
                        device: *device,
                        worker,
                        gpu,
                        policy,
                        batch: b,
                        latency_ms: l,
                        p99_ms: p,
                        item_ms,
                        per_step: per_step.is_some(),
                        memory_mb: m,
                        cores,
                        per_request,
                        gpu_load: per_request * load,
                        sm_share,
                    });
                }
            }
        }
    }
    if out.is_empty() {
        if measured.iter().all(|(d, _)| *d == Device::Gpu) && gpus.is_empty() {
            return Err(PlanError::DeviceUnavailable {
                node: node.id.clone(),
                span: device_span,
            });
        }
        let reason =
            match max_batch {
                Some(m) if !rejected_batches.is_empty() => format!(
                "its annotation allows batches of at most {m}, but the profile measured only {}",
                rejected_batches.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            ),
                _ => "no device of the target is available to it".to_string(),
            };
        return Err(PlanError::NoOption {
            node: node.id.clone(),
            reason,
            span: ann.batch_span.or(Some(node.span)),
        });
    }
    let generation = sequences.and_then(|(lengths, prompt)| {
        let mut predictions = Vec::new();
        for (device, dp) in &measured {
            let Some(costs) = StepCosts::from_profile(dp) else {
                continue;
            };
            for &b in &dp.batch {
                let over = max_batch
                    .filter(|&m| b > m)
                    .map(|m| format!("above the annotation's max of {m}"));
                let batched = if b == 1 {
                    BatchPolicy::None
                } else {
                    BatchPolicy::Dynamic
                };
                let fixed = |p: BatchPolicy| match (&ann.batch, p) {
                    (
                        Some(BatchHint::Continuous { .. }),
                        BatchPolicy::None | BatchPolicy::Dynamic,
                    )
                    | (
                        Some(BatchHint::Dynamic { .. } | BatchHint::None),
                        BatchPolicy::Continuous,
                    ) => Some("the `@batch` annotation fixes another policy".to_string()),
                    _ => None,
                };
                predictions.push(PolicyPrediction {
                    device: *device,
                    policy: batched,
                    batch: b,
                    cost: generation::batched(&costs, &lengths, b),
                    ruled_out: fixed(batched).or(over.clone()),
                });
                if b > 1 {
                    let need = f64::from(b) * (prompt + lengths.mean());
                    let kv = kv_tokens.filter(|&kv| need > kv).map(|kv| {
                        format!("needs {} KV tokens, over `kv_tokens = {kv}`", round3(need))
                    });
                    predictions.push(PolicyPrediction {
                        device: *device,
                        policy: BatchPolicy::Continuous,
                        batch: b,
                        cost: generation::continuous(&costs, &lengths, b),
                        ruled_out: fixed(BatchPolicy::Continuous).or(over).or(kv),
                    });
                }
            }
        }
        (!predictions.is_empty()).then_some(Generation {
            lengths,
            predictions,
        })
    });
    Ok((out, generation))
}

fn round3(x: f64) -> f64 {
    super::lower::round3(x)
}

/// Whether a node on `opt` with `replicas` replicas runs inline on its worker's thread: a CPU
/// builtin (never an exec program or a model) with one replica, whose items cost at most
/// [`INLINE_ITEM_MS`] and whose batches at most [`INLINE_BATCH_MS`]. A hand-off to a replica
/// thread would cost more than such a node's work.
pub fn runs_inline(node: &crate::ir::Node, opt: &NodeOption, replicas: u32) -> bool {
    matches!(node.implementation, Implementation::Builtin(_))
        && !node.generates
        && replicas == 1
        && cheap(opt)
}

fn missing_profile(options: &PlanOptions, key: &[&str], node: &crate::ir::Node) -> PlanError {
    // The line of the closest enclosing key that exists (`nodes:` for a missing kind).
    let line = options
        .profile_text
        .as_deref()
        .and_then(|t| mars_plan::find_key_path(t, key));
    let location = match line {
        Some(l) => format!("{}:{l}", options.profile_path),
        None => options.profile_path.clone(),
    };
    PlanError::MissingProfile {
        location,
        key: key.join("."),
        node: node.id.clone(),
        kind: node.kind.clone(),
        span: Some(node.span),
    }
}
