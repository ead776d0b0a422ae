//! `marsc compile --explain`: a plan for humans. A table of the nodes, the bottleneck and the
//! binding constraint, the headroom of every CPU pool and GPU, the SLO verdicts, and what the
//! next resource would buy (found by planning again on a target with one more GPU, or more
//! cores).

use std::fmt::Write;

use mars_plan::{BatchPolicy, Gpu, Profile, Target};

use super::evaluate::Bound;
use super::lower::{describe_bound, describe_critical_path, round3};
use super::model::NodeOption;
use super::{plan_pipeline_explained, PlanOptions, Planned};
use crate::ir::Pipeline;

/// Cores added to a worker by the "more cores" what-if.
pub const EXTRA_CORES: f64 = 4.0;

/// The explanation of `planned`, as text. `profile`, `target` and `options` are those it was
/// planned with (the what-ifs plan again with one resource more).
pub fn explain(
    planned: &Planned,
    pipeline: &Pipeline,
    profile: Option<&Profile>,
    target: &Target,
    options: &PlanOptions,
) -> String {
    let plan = &planned.plan;
    let model = &planned.model;
    let e = &planned.solution.eval;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pipeline `{}`: {}/s, latency p50 {} ms, p99 {} ms",
        plan.pipeline,
        plan.predicted.throughput,
        plan.predicted.latency_p50_ms,
        plan.predicted.latency_p99_ms
    );
    if let Some(r) = model.objectives.rate {
        let _ = writeln!(s, "objective: carry the offered load of {}/s (`--rate`) with the lowest p99, then the fewest resources (latencies at {}/s, queueing included)", round3(r), round3(e.rate));
    } else if model.objectives.throughput.is_some() {
        let _ = writeln!(s, "objective: sustain the throughput SLO with the fewest resources (latencies judged at {}/s, queueing included)", round3(e.rate));
    } else {
        let _ = writeln!(
            s,
            "objective: the most throughput the target allows, then (within {}% of it) the lowest p99",
            super::evaluate::THROUGHPUT_TOLERANCE * 100.0
        );
    }
    for note in &plan.notes {
        let _ = writeln!(s, "note: {note}");
    }
    let _ = writeln!(s);

    let header = [
        "node",
        "kind",
        "device",
        "batch",
        "replicas",
        "util",
        "latency ms",
        "p99 ms",
        "items/s",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    for n in &plan.nodes {
        let device = match &n.gpu {
            Some(g) => format!("gpu {}@{}", g, n.worker),
            None if plan.is_inline(&n.id) => format!("cpu@{} inline", n.worker),
            None => format!("cpu@{}", n.worker),
        };
        let batch = match n.batch.policy {
            BatchPolicy::None => "none".to_string(),
            BatchPolicy::Dynamic => format!("≤{} wait {}ms", n.batch.max, n.batch.wait_ms),
            BatchPolicy::Continuous => format!("cont. ≤{}", n.batch.max),
        };
        rows.push([
            n.id.clone(),
            n.kind.clone(),
            device,
            batch,
            n.replicas.to_string(),
            format!("{:.2}", n.predicted.utilization),
            n.predicted.latency_ms.to_string(),
            n.predicted.p99_ms.to_string(),
            n.predicted.throughput.to_string(),
        ]);
    }
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            l.push_str(&" ".repeat(w - c.chars().count()));
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(s, "{}", line(&header.map(String::from)));
    for r in &rows {
        let _ = writeln!(s, "{}", line(r));
    }
    let _ = writeln!(s);
    s.push_str(&generating_policies(planned));
    s.push_str(&super::load::load_table(planned));

    let _ = writeln!(
        s,
        "bottleneck: {} — {}",
        plan.predicted.bottleneck,
        describe_bound(model, &planned.solution)
    );
    let binding = match (e.bound, model.objectives.throughput) {
        (_, Some(n)) => format!(
            "`slo throughput >= {n}/s` (the plan keeps the fewest resources that sustain it)"
        ),
        (Bound::Unbounded, None) => "none".to_string(),
        (_, None) => match latency_cost(
            pipeline,
            profile,
            target,
            options,
            plan.predicted.throughput,
        ) {
            Some((slo, without)) => format!(
                "`slo {slo}`: it keeps batches small; without it the plan would reach {without}/s",
            ),
            None => describe_bound(model, &planned.solution),
        },
    };
    let _ = writeln!(s, "binding constraint: {binding}");
    if !e.critical_path.is_empty() {
        let _ = writeln!(
            s,
            "critical path: {}",
            describe_critical_path(model, &planned.solution)
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "headroom at {}/s:", round3(e.rate));
    let mut cpu = vec![0.0; model.workers.len()];
    let mut gpu = vec![0.0; model.gpus.len()];
    let mut gpu_mem = vec![0.0; model.gpus.len()];
    let mut host_mem = vec![0.0; model.workers.len()];
    // The runtime's own CPU (SPEC 2.4.9), part of `cpu`.
    let mut runtime = vec![0.0; model.workers.len()];
    if let Some(first) = runtime.first_mut() {
        *first += e.rate * model.request_cores();
    }
    for (i, node) in model.nodes.iter().enumerate() {
        let o = &node.options[planned.solution.choice[i]];
        runtime[o.worker] += e.rate * model.runtime_cores(i, o);
        let u = e.rate * o.per_request;
        let r = f64::from(e.replicas[i]);
        match o.gpu {
            Some(g) => {
                gpu[g] += u;
                gpu_mem[g] += r * o.memory_mb;
            }
            None => {
                cpu[o.worker] += u * o.cores;
                host_mem[o.worker] += r * o.memory_mb;
            }
        }
    }
    for (w, worker) in model.workers.iter().enumerate() {
        cpu[w] += runtime[w];
        let mut l = format!(
            "  {}.cpu: {} of {} cores busy, {} free",
            worker.name,
            round3(cpu[w]),
            worker.cpus,
            round3((worker.cpus - cpu[w]).max(0.0))
        );
        if model.runtime.is_some() {
            let _ = write!(
                l,
                " (the runtime's own share: {} cores, {}%)",
                round3(runtime[w]),
                round3(100.0 * runtime[w] / worker.cpus.max(f64::MIN_POSITIVE))
            );
        }
        if let Some(m) = worker.memory_mb {
            let _ = write!(l, "; memory {} of {} MB", round3(host_mem[w]), round3(m));
        }
        let _ = writeln!(s, "{l}");
    }
    for (g, res) in model.gpus.iter().enumerate() {
        let _ = writeln!(
            s,
            "  {} ({}): {} of {} share busy, {} free; memory {} of {} MB",
            res.name,
            model.workers[res.worker].name,
            round3(gpu[g]),
            res.share,
            round3((res.share - gpu[g]).max(0.0)),
            round3(gpu_mem[g]),
            round3(res.memory_mb)
        );
    }
    if !plan.slos.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "SLOs:");
        for v in &plan.slos {
            let _ = writeln!(
                s,
                "  {}: predicted {} — {}",
                v.slo,
                v.predicted,
                if v.met { "met" } else { "MISSED" }
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "what the next resource would buy:");
    for (what, t) in what_ifs(pipeline, profile, target, options, planned) {
        let now = plan.predicted.throughput;
        let gain = if now > 0.0 {
            format!(" ({:+.1}%)", 100.0 * (t - now) / now)
        } else {
            String::new()
        };
        let _ = writeln!(s, "  {what}: {t}/s{gain}");
    }
    s
}

/// For every generating node costed per step: its output lengths and, on the device it was
/// given, the best of each batch policy (the most items/s of one replica): among the options
/// the planner could take (the chosen one for the chosen policy; same worker and GPU), else
/// among those the annotations or the KV bound rule out, with the reason. Empty when there is
/// no such node.
pub fn generating_policies(planned: &Planned) -> String {
    let model = &planned.model;
    let mut s = String::new();
    for (i, node) in model.nodes.iter().enumerate() {
        let Some(generation) = &node.generation else {
            continue;
        };
        if s.is_empty() {
            let _ = writeln!(
                s,
                "generating nodes (items/s of one replica on the chosen device):"
            );
        }
        let lengths = &generation.lengths;
        let chosen = &node.options[planned.solution.choice[i]];
        let _ = writeln!(
            s,
            "  {}: output tokens mean {}, p50 {}, p99 {}",
            node.id,
            round3(lengths.mean()),
            lengths.quantile_of_max(1, 0.5),
            lengths.quantile_of_max(1, 0.99)
        );
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for policy in [
            BatchPolicy::None,
            BatchPolicy::Dynamic,
            BatchPolicy::Continuous,
        ] {
            let here = |o: &&NodeOption| {
                o.policy == policy
                    && o.per_step
                    && o.device == chosen.device
                    && o.worker == chosen.worker
                    && o.gpu == chosen.gpu
            };
            // The fewest replica ms per item; ties to the smaller batch.
            let allowed = if chosen.policy == policy && chosen.per_step {
                Some(chosen)
            } else {
                node.options
                    .iter()
                    .filter(here)
                    .fold(None, |best: Option<&NodeOption>, o| match best {
                        Some(b) if b.item_ms <= o.item_ms => Some(b),
                        _ => Some(o),
                    })
            };
            let row = match allowed {
                Some(o) => Some((
                    o.batch,
                    o.item_ms,
                    o.latency_ms,
                    o.p99_ms,
                    if std::ptr::eq(o, chosen) {
                        "  ← chosen".to_string()
                    } else {
                        String::new()
                    },
                )),
                None => generation
                    .predictions
                    .iter()
                    .filter(|p| p.policy == policy && p.device == chosen.device)
                    .fold(
                        None,
                        |best: Option<&super::model::PolicyPrediction>, p| match best {
                            Some(b) if b.cost.item_ms <= p.cost.item_ms => Some(b),
                            _ => Some(p),
                        },
                    )
                    .map(|p| {
                        (
                            p.batch,
                            p.cost.item_ms,
                            p.cost.latency_ms,
                            p.cost.p99_ms,
                            format!(
                                "  (ruled out: {})",
                                p.ruled_out.as_deref().unwrap_or("not offered")
                            ),
                        )
                    }),
            };
            let Some((b, item_ms, latency, p99, mark)) = row else {
                continue;
            };
            let name = match policy {
                BatchPolicy::None => "none".to_string(),
                BatchPolicy::Dynamic => format!("dynamic ≤{b}"),
                BatchPolicy::Continuous => format!("continuous ≤{b}"),
            };
            rows.push((
                name,
                format!("{} items/s", round3(1000.0 / item_ms)),
                format!(
                    "latency {} ms, p99 {} ms{mark}",
                    round3(latency),
                    round3(p99)
                ),
            ));
        }
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        for (a, b, c) in rows {
            let _ = writeln!(
                s,
                "    {a}{}  {b}{}  {c}",
                " ".repeat(w0 - a.chars().count()),
                " ".repeat(w1 - b.chars().count())
            );
        }
    }
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// The latency SLO whose removal would raise throughput the most, and the throughput then
/// (`None` when no latency SLO costs throughput).
fn latency_cost(
    pipeline: &Pipeline,
    profile: Option<&Profile>,
    target: &Target,
    options: &PlanOptions,
    now: f64,
) -> Option<(String, f64)> {
    let mut options = options.clone();
    options.allow_slo_miss = true;
    let mut best: Option<(String, f64)> = None;
    for (k, slo) in pipeline.slos.iter().enumerate() {
        if matches!(slo.kind, crate::ir::SloKind::ThroughputPerS(_)) {
            continue;
        }
        let mut relaxed = pipeline.clone();
        relaxed.slos.remove(k);
        if let Ok(p) = plan_pipeline_explained(&relaxed, profile, target, &options) {
            let t = p.plan.predicted.throughput;
            if t > now * 1.001 && best.as_ref().is_none_or(|(_, b)| t > *b) {
                best = Some((slo.text.clone(), t));
            }
        }
    }
    best
}

/// Throughput of the plan on targets with one resource more: another GPU like the first (or a
/// 16 GB one; only where the profile measured some kind on a GPU), and [`EXTRA_CORES`] more cores on the worker whose CPU binds (or the first); and,
/// where a node's `@replicas(N)` binds, without that annotation.
pub fn what_ifs(
    pipeline: &Pipeline,
    profile: Option<&Profile>,
    target: &Target,
    options: &PlanOptions,
    planned: &Planned,
) -> Vec<(String, f64)> {
    let mut options = options.clone();
    options.allow_slo_miss = true;
    options.notes.clear();
    let mut out = Vec::new();

    let mut more_gpu = target.clone();
    let (wi, template) = target
        .workers
        .iter()
        .enumerate()
        .find_map(|(i, w)| w.gpus.first().map(|g| (i, g.clone())))
        .unwrap_or((
            0,
            Gpu {
                name: "gpu".to_string(),
                memory_gb: 16.0,
                share: 1.0,
                mig: Vec::new(),
                mps: false,
            },
        ));
    let mut name = format!("{}_extra", template.name);
    while target
        .workers
        .iter()
        .any(|w| w.name == name || w.gpus.iter().any(|g| g.name == name))
    {
        name.push('_');
    }
    let label = if target.has_gpu() {
        format!(
            "another GPU like `{}` on `{}`",
            template.name, target.workers[wi].name
        )
    } else {
        format!(
            "a {} GB GPU on `{}`",
            template.memory_gb, target.workers[wi].name
        )
    };
    more_gpu.workers[wi].gpus.push(Gpu { name, ..template });
    // A GPU only helps where some node kind was measured on one.
    let gpu_profiled = profile.is_some_and(|p| p.nodes.values().any(|k| k.gpu.is_some()));
    if gpu_profiled {
        if let Ok(p) = plan_pipeline_explained(pipeline, profile, &more_gpu, &options) {
            out.push((label, p.plan.predicted.throughput));
        }
    }

    let w = match planned.solution.eval.bound {
        Bound::Cpu(w) | Bound::Memory(w) => w,
        _ => 0,
    };
    let mut more_cpu = target.clone();
    more_cpu.workers[w].cpus += EXTRA_CORES;
    if let Ok(p) = plan_pipeline_explained(pipeline, profile, &more_cpu, &options) {
        out.push((
            format!("{EXTRA_CORES} more cores on `{}`", target.workers[w].name),
            p.plan.predicted.throughput,
        ));
    }

    // A node held at its `@replicas(N)`: what letting the planner choose would buy.
    if let Bound::Replicas(i) = planned.solution.eval.bound {
        let node = &planned.model.nodes[i];
        if let Some(r) = node.fixed_replicas {
            let mut free = pipeline.clone();
            free.graph[node.index].annotations.replicas = None;
            if let Ok(p) = plan_pipeline_explained(&free, profile, target, &options) {
                out.push((
                    format!("no `@replicas({r})` on `{}`", node.id),
                    p.plan.predicted.throughput,
                ));
            }
        }
    }
    out
}
