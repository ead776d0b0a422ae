//! The planner: from a checked pipeline, a profile and a target, choose every node's device,
//! placement, batch size and replicas so that throughput is as high as the target allows while
//! the latency SLOs hold (or, under `slo throughput >= N/s`, so that N is sustained with the
//! fewest resources), and say why.
//!
//! The steps, in order:
//! 1. [`model::CostModel::build`]: every node's options from the profile and the target,
//!    honouring annotations (errors: missing profile entries, `@device(gpu)` without a GPU);
//!    a generating model's options under each batch policy come from [`generation`];
//! 2. [`search::search`]: the best assignment under [`evaluate::evaluate`];
//! 3. [`check_slos`]: SLOs no plan meets become errors (unless allowed);
//! 4. [`lower::lower_plan`]: the plan file's structs.
//!
//! [`explain`] renders a plan for humans; [`diff`] compares two plans. Pure: no IO, no clock.

pub mod diff;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod generation;
#[cfg(test)]
mod gpu_share_tests;
pub mod load;
#[cfg(test)]
mod load_tests;
pub mod lower;
pub mod model;
#[cfg(test)]
mod optimality_tests;
pub mod pool;
pub mod queue;
mod screen;
pub mod search;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use mars_plan::{Plan, PlanOrigin, Profile, Target};

pub use error::PlanError;
pub use search::SearchOptions;

use crate::ir::Pipeline;
use model::CostModel;
use search::Solution;

/// What the planner needs besides the pipeline, profile and target.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Provenance written into the plan.
    pub origin: PlanOrigin,
    /// The profile's path and text, only to name lines in errors.
    pub profile_path: String,
    pub profile_text: Option<String>,
    /// Remarks copied into the plan (e.g. "planned without a profile").
    pub notes: Vec<String>,
    /// Write the best plan even where an SLO is not met (it gets a note instead of an error).
    pub allow_slo_miss: bool,
    /// `--rate R`: plan for an offered load of R requests/s (SPEC 2.4.10).
    pub rate: Option<f64>,
    pub search: SearchOptions,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            origin: PlanOrigin {
                source: String::new(),
                source_hash: String::new(),
                profile_hash: None,
                target_hash: None,
            },
            profile_path: "profile".to_string(),
            profile_text: None,
            notes: Vec::new(),
            allow_slo_miss: false,
            rate: None,
            search: SearchOptions::default(),
        }
    }
}

/// A plan together with the model and solution it came from (for `--explain`).
#[derive(Debug, Clone)]
pub struct Planned {
    pub plan: Plan,
    pub model: CostModel,
    pub solution: Solution,
}

/// Plan one pipeline. Without a profile every node is assumed to take 1 ms per item on the
/// CPU (on the GPU where `@device(gpu)` says so), and the plan's notes say so.
///
/// ```
/// # use mars_compiler::plan::{plan_pipeline, PlanOptions};
/// # fn demo(p: &mars_compiler::ir::Pipeline, t: &mars_plan::Target) {
/// let plan = plan_pipeline(p, None, t, &PlanOptions::default()).expect("plannable");
/// assert_eq!(plan.nodes.len(), p.graph.node_count());
/// # }
/// ```
pub fn plan_pipeline(
    pipeline: &Pipeline,
    profile: Option<&Profile>,
    target: &Target,
    options: &PlanOptions,
) -> Result<Plan, Vec<PlanError>> {
    plan_pipeline_explained(pipeline, profile, target, options).map(|p| p.plan)
}

/// [`plan_pipeline`], keeping what `--explain` needs.
pub fn plan_pipeline_explained(
    pipeline: &Pipeline,
    profile: Option<&Profile>,
    target: &Target,
    options: &PlanOptions,
) -> Result<Planned, Vec<PlanError>> {
    let model = CostModel::build(pipeline, profile, target, options)?;
    let solution = search::search(&model, &options.search);
    let mut options = options.clone();
    if profile.is_none() {
        options.notes.push(format!(
            "planned without a profile: every node is assumed to take {} ms per item; predictions are not measurements",
            model::DEFAULT_ITEM_MS
        ));
    }
    let mut misses = check_slos(pipeline, &model, &solution);
    if let Some(rate) = model.objectives.rate {
        let e = &solution.eval;
        if e.capacity < rate * (1.0 + 1e-9) || !e.p99_ms.is_finite() {
            misses.push(PlanError::RateUnreachable {
                rate,
                best: lower::round3(e.capacity),
                binding: lower::describe_bound(&model, &solution),
                span: Some(pipeline.span),
            });
        }
    }
    if !solution.eval.fits {
        return Err(vec![does_not_fit(pipeline, &model, &solution)]);
    }
    if !misses.is_empty() {
        if profile.is_none() {
            // Predictions without measurements cannot fail a build.
            options.notes.push(
                "SLOs are not enforced without a profile; the verdicts below use the assumed costs"
                    .to_string(),
            );
        } else if !options.allow_slo_miss {
            return Err(misses);
        } else {
            for m in &misses {
                options.notes.push(format!(
                    "SLO missed (written anyway, --allow-slo-miss): {m}"
                ));
            }
        }
    }
    let plan = lower::lower_plan(pipeline, &model, &solution, &options);
    Ok(Planned {
        plan,
        model,
        solution,
    })
}

/// One error per SLO the solution misses, naming the best value reached and what binds it.
pub fn check_slos(pipeline: &Pipeline, model: &CostModel, solution: &Solution) -> Vec<PlanError> {
    let mut errors = Vec::new();
    for slo in &pipeline.slos {
        let (value, met) = lower::slo_verdict(slo.kind, solution);
        if met {
            continue;
        }
        let (best, binding) = match slo.kind {
            crate::ir::SloKind::ThroughputPerS(_) => (
                format!("{}/s", lower::round3(value)),
                lower::describe_bound(model, solution),
            ),
            crate::ir::SloKind::LatencyP50Ms(_) | crate::ir::SloKind::LatencyP99Ms(_) => (
                format!("{} ms", lower::round3(value)),
                lower::describe_critical_path(model, solution),
            ),
        };
        errors.push(PlanError::SloUnmet {
            slo: slo.text.clone(),
            best,
            binding,
            span: Some(slo.span),
        });
    }
    errors
}

fn does_not_fit(pipeline: &Pipeline, model: &CostModel, solution: &Solution) -> PlanError {
    let reason = match solution.eval.bound {
        evaluate::Bound::GpuMemory(g) => format!(
            "the nodes placed on GPU `{}` need more than its {} MB even with one replica each",
            model.gpus[g].name, model.gpus[g].memory_mb
        ),
        evaluate::Bound::Memory(w) => format!(
            "the nodes placed on worker `{}` need more than its {} MB even with one replica each",
            model.workers[w].name,
            model.workers[w].memory_mb.unwrap_or(0.0)
        ),
        _ => "no placement fits".to_string(),
    };
    PlanError::DoesNotFit {
        reason,
        span: Some(pipeline.span),
    }
}
