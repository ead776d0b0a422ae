//! What can stop the planner. Each error has a stable code; those caused by something in the
//! source carry its span (the CLI attaches the source text so they render as `path:line:col`),
//! those caused by the profile name the profile file, key and line.

use miette::{Diagnostic, SourceSpan};

/// One reason the planner could not produce a plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Diagnostic)]
pub enum PlanError {
    /// `@device(gpu)` (or a profile that lists a kind on the GPU only) on a target without a GPU.
    #[error("node `{node}` must run on the gpu, but the target has no GPU")]
    #[diagnostic(
        code(mars::plan::device_unavailable),
        help("use a target with a GPU (`gpus:` under a worker), or change the annotation to `@device(cpu)` or `@device(any)`")
    )]
    DeviceUnavailable {
        node: String,
        #[label("this needs a GPU")]
        span: Option<SourceSpan>,
    },

    /// `@device(gpu)` on a node whose kind has no GPU implementation (its `arch` or `fn` is
    /// not declared `@gpu`).
    #[error("node `{node}` must run on the gpu, but its kind `{kind}` ({implementation}) has no GPU implementation")]
    #[diagnostic(
        code(mars::plan::no_gpu_implementation),
        help("change the annotation to `@device(cpu)` or `@device(any)`; only kinds whose `arch` or `fn` is declared `@gpu` run on a GPU")
    )]
    NoGpuImplementation {
        node: String,
        kind: String,
        /// What implements the kind, e.g. ``arch `unet_tiny` `` or ``builtin `text.lower` ``.
        implementation: String,
        #[label("placed on a GPU here")]
        span: Option<SourceSpan>,
    },

    /// The profile has no measurements for a node kind the pipeline uses (or none on the
    /// device an annotation demands).
    #[error("{location}: the profile has no entry `{key}` for node `{node}` (kind `{kind}`)")]
    #[diagnostic(
        code(mars::plan::missing_profile),
        help(
            "profile the pipeline again (`marsc profile`), or add `{key}` to the profile by hand"
        )
    )]
    MissingProfile {
        /// `path:line` of the profile (the line of the closest enclosing key that exists).
        location: String,
        key: String,
        node: String,
        kind: String,
        #[label("node `{node}` is of kind `{kind}`")]
        span: Option<SourceSpan>,
    },

    /// The annotations leave no measured option (e.g. `@batch(none)` where the profile has
    /// no batch size 1, or `@batch(max = 4)` where its smallest size is 8).
    #[error("node `{node}` has no option that its annotations allow: {reason}")]
    #[diagnostic(
        code(mars::plan::no_option),
        help("relax the annotation, or profile the batch sizes it allows")
    )]
    NoOption {
        node: String,
        reason: String,
        #[label("here")]
        span: Option<SourceSpan>,
    },

    /// No placement fits in memory, even with one replica per node.
    #[error("the pipeline does not fit the target: {reason}")]
    #[diagnostic(
        code(mars::plan::does_not_fit),
        help("use a target with more memory, or nodes that need less")
    )]
    DoesNotFit {
        reason: String,
        #[label("this pipeline")]
        span: Option<SourceSpan>,
    },

    /// An SLO that no plan meets.
    #[error("no plan meets `slo {slo}`: the best reachable is {best}; the binding constraint is {binding}")]
    #[diagnostic(
        code(mars::plan::slo_unmet),
        help("relax the SLO, give the target more resources, or pass `--allow-slo-miss` to write the best plan anyway")
    )]
    SloUnmet {
        slo: String,
        best: String,
        binding: String,
        #[label("not met")]
        span: Option<SourceSpan>,
    },

    /// `--rate R` above what any plan sustains with a stable queue.
    #[error("no plan carries the offered load of {rate}/s (`--rate`): the most any plan sustains is {best}/s; the binding constraint is {binding}")]
    #[diagnostic(
        code(mars::plan::rate_unreachable),
        help("plan for a lower rate, give the target more resources, or pass `--allow-slo-miss` to write the best plan anyway")
    )]
    RateUnreachable {
        rate: f64,
        best: f64,
        binding: String,
        #[label("this pipeline")]
        span: Option<SourceSpan>,
    },
}

impl PlanError {
    /// The stable code (`mars::plan::…`).
    pub fn code(&self) -> &'static str {
        match self {
            PlanError::DeviceUnavailable { .. } => "mars::plan::device_unavailable",
            PlanError::NoGpuImplementation { .. } => "mars::plan::no_gpu_implementation",
            PlanError::MissingProfile { .. } => "mars::plan::missing_profile",
            PlanError::NoOption { .. } => "mars::plan::no_option",
            PlanError::DoesNotFit { .. } => "mars::plan::does_not_fit",
            PlanError::SloUnmet { .. } => "mars::plan::slo_unmet",
            PlanError::RateUnreachable { .. } => "mars::plan::rate_unreachable",
        }
    }

    /// As a front-end [`Problem`](crate::diagnostics::Problem), so that it renders like every
    /// other diagnostic, pointing into the source.
    pub fn to_problem(&self) -> crate::diagnostics::Problem {
        let mut p = crate::diagnostics::Problem::error(self.code(), self.to_string());
        let label = match self {
            PlanError::DeviceUnavailable { span, .. } => {
                span.map(|s| (s, "this needs a GPU".to_string()))
            }
            PlanError::NoGpuImplementation { span, .. } => {
                span.map(|s| (s, "placed on a GPU here".to_string()))
            }
            PlanError::MissingProfile {
                span, node, kind, ..
            } => span.map(|s| (s, format!("node `{node}` is of kind `{kind}`"))),
            PlanError::NoOption { span, .. } => span.map(|s| (s, "here".to_string())),
            PlanError::DoesNotFit { span, .. } => span.map(|s| (s, "this pipeline".to_string())),
            PlanError::SloUnmet { span, .. } => span.map(|s| (s, "not met".to_string())),
            PlanError::RateUnreachable { span, .. } => {
                span.map(|s| (s, "this pipeline".to_string()))
            }
        };
        if let Some((span, text)) = label {
            p = p.label(span, text);
        }
        if let Some(help) = miette::Diagnostic::help(self) {
            p = p.help(help.to_string());
        }
        p
    }
}
