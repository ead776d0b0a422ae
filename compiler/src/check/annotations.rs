//! Annotations (`@device`, `@replicas`, `@batch`) and SLO statements: names, arguments and
//! values checked, lowered to the IR's planner hints.

use super::decls::{ConstScope, StaticType};
use super::Sink;
use crate::diagnostics::{did_you_mean, Problem};
use crate::ir::{Annotations, BatchHint, DeviceHint, Literal, Slo, SloKind};
use crate::syntax::ast::{self, AnnArg, Annotation, Span};

use mars_plan::limits::{MAX_BATCH, MAX_BATCH_WAIT_MS, MAX_REPLICAS};

const ANNOTATIONS: [&str; 3] = ["device", "replicas", "batch"];

/// Check the annotations of a statement. `generates` is whether the annotated node is a
/// generating model (`None`: the call itself was broken, so skip checks that need it).
pub(crate) fn check_annotations(
    anns: &[Annotation],
    generates: Option<bool>,
    consts: &ConstScope,
    sink: &mut Sink,
) -> Annotations {
    let mut out = Annotations::default();
    let mut seen: Vec<(&str, Span)> = Vec::new();
    for a in anns {
        let name = a.name.name.as_str();
        if !ANNOTATIONS.contains(&name) {
            let mut p = Problem::error(
                "mars::annotation::unknown",
                format!("unknown annotation `@{name}`"),
            )
            .label(a.name.span, "not an annotation");
            p = match did_you_mean(name, ANNOTATIONS) {
                Some(s) => p.help(format!("did you mean `@{s}`?")),
                None => p.help("the annotations are @device, @replicas and @batch"),
            };
            sink.push(p);
            continue;
        }
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            sink.push(
                Problem::error(
                    "mars::annotation::duplicate",
                    format!("`@{name}` is given twice"),
                )
                .label(a.span, "given again here")
                .label(*first, "first given here"),
            );
            continue;
        }
        seen.push((name, a.span));
        let result = match name {
            "device" => device(a).map(|d| {
                out.device = Some(d);
                out.device_span = Some(a.span.into());
            }),
            "replicas" => replicas(a, consts).map(|r| {
                out.replicas = Some(r);
                out.replicas_span = Some(a.span.into());
            }),
            _ => batch(a, generates, consts).map(|b| {
                out.batch = Some(b);
                out.batch_span = Some(a.span.into());
            }),
        };
        if let Err(p) = result {
            sink.push(p);
        }
    }
    out
}

fn bad(a: &Annotation, span: Span, message: impl Into<String>, label: &str, help: &str) -> Problem {
    let _ = a;
    Problem::error("mars::annotation::bad_argument", message)
        .label(span, label.to_string())
        .help(help.to_string())
}

fn args_span(a: &Annotation) -> Span {
    a.span
}

fn device(a: &Annotation) -> Result<DeviceHint, Problem> {
    const HELP: &str = "write `@device(cpu)`, `@device(gpu)` or `@device(any)`";
    match a.args.as_slice() {
        [AnnArg::Positional(ast::Value::Name(p))] => match p.text().as_str() {
            "cpu" => Ok(DeviceHint::Cpu),
            "gpu" => Ok(DeviceHint::Gpu),
            "any" => Ok(DeviceHint::Any),
            other => {
                let help = match did_you_mean(other, ["cpu", "gpu", "any"]) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => HELP.to_string(),
                };
                Err(bad(
                    a,
                    p.span,
                    format!("unknown device `{other}`"),
                    "expected cpu, gpu or any",
                    &help,
                ))
            }
        },
        [AnnArg::Positional(v)] => Err(bad(
            a,
            v.span(),
            "`@device` takes a device name",
            "expected cpu, gpu or any",
            HELP,
        )),
        _ => Err(bad(
            a,
            args_span(a),
            "`@device` takes exactly one device",
            "one argument expected",
            HELP,
        )),
    }
}

fn positive_int(v: &ast::Value, consts: &ConstScope, what: &str, max: u32) -> Result<u32, Problem> {
    let lit = consts.static_value(v, &StaticType::Int, "mars::annotation::bad_argument", what)?;
    match lit {
        Literal::Int(n) if n >= 1 && n <= i64::from(max) => Ok(n as u32),
        Literal::Int(n) if n >= 1 => Err(Problem::error(
            "mars::annotation::bad_argument",
            format!("{what} is {n}; at most {max} (SPEC 7.1)"),
        )
        .label(v.span(), format!("at most {max}"))),
        _ => Err(Problem::error(
            "mars::annotation::bad_argument",
            format!("{what} must be at least 1"),
        )
        .label(v.span(), "expected a positive integer")),
    }
}

fn replicas(a: &Annotation, consts: &ConstScope) -> Result<u32, Problem> {
    match a.args.as_slice() {
        [AnnArg::Positional(v)] => positive_int(v, consts, "`@replicas`", MAX_REPLICAS),
        _ => Err(bad(
            a,
            args_span(a),
            "`@replicas` takes one count",
            "one argument expected",
            "write `@replicas(2)`",
        )),
    }
}

fn batch(
    a: &Annotation,
    generates: Option<bool>,
    consts: &ConstScope,
) -> Result<BatchHint, Problem> {
    const HELP: &str =
        "write `@batch(none)`, `@batch(max = 32, wait = 5ms)` or `@batch(continuous, max = 64)`";
    let mut mode: Option<(&str, Span)> = None;
    let mut max = None;
    let mut wait = None;
    for arg in &a.args {
        match arg {
            AnnArg::Positional(ast::Value::Name(p))
                if matches!(p.text().as_str(), "none" | "continuous") =>
            {
                if mode.is_some() {
                    return Err(bad(
                        a,
                        p.span,
                        "`@batch` takes one mode",
                        "a second mode",
                        HELP,
                    ));
                }
                mode = Some((
                    if p.text() == "none" {
                        "none"
                    } else {
                        "continuous"
                    },
                    p.span,
                ));
            }
            AnnArg::Positional(v) => {
                let mut p = Problem::error(
                    "mars::annotation::bad_argument",
                    "unexpected argument of `@batch`",
                )
                .label(v.span(), "expected none, continuous, max = N or wait = D");
                p = match v {
                    ast::Value::Name(path) => {
                        match did_you_mean(&path.text(), ["none", "continuous"]) {
                            Some(s) => p.help(format!("did you mean `{s}`?")),
                            None => p.help(HELP),
                        }
                    }
                    ast::Value::Lit(_) => p.help(HELP),
                };
                return Err(p);
            }
            AnnArg::Named { name, value, span } => match name.name.as_str() {
                "max" => {
                    if max.is_some() {
                        return Err(bad(a, *span, "`max` is given twice", "again", HELP));
                    }
                    max = Some(positive_int(value, consts, "`max`", MAX_BATCH)?);
                }
                "wait" => {
                    if wait.is_some() {
                        return Err(bad(a, *span, "`wait` is given twice", "again", HELP));
                    }
                    match consts.static_value(
                        value,
                        &StaticType::Duration,
                        "mars::annotation::bad_argument",
                        "`wait`",
                    )? {
                        Literal::Duration(ms) if ms > MAX_BATCH_WAIT_MS => {
                            return Err(bad(
                                a,
                                value.span(),
                                format!(
                                "`wait` is {ms} ms; at most {MAX_BATCH_WAIT_MS} ms (60s; SPEC 7.1)"
                            ),
                                "too long",
                                HELP,
                            ))
                        }
                        Literal::Duration(ms) => wait = Some((ms, *span)),
                        _ => unreachable!("a Duration value is a duration"),
                    }
                }
                other => {
                    let help = match did_you_mean(other, ["max", "wait"]) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => HELP.to_string(),
                    };
                    return Err(bad(
                        a,
                        name.span,
                        format!("`@batch` has no argument `{other}`"),
                        "unknown argument",
                        &help,
                    ));
                }
            },
        }
    }
    match mode {
        Some(("none", span)) => {
            if max.is_some() || wait.is_some() {
                return Err(bad(
                    a,
                    span,
                    "`@batch(none)` takes no other arguments",
                    "one item at a time",
                    HELP,
                ));
            }
            Ok(BatchHint::None)
        }
        Some((_, span)) => {
            if let Some((_, wspan)) = wait {
                return Err(bad(
                    a,
                    wspan,
                    "continuous batching takes no `wait`",
                    "new sequences join at every step",
                    HELP,
                ));
            }
            if generates == Some(false) {
                return Err(Problem::error("mars::annotation::continuous_without_generate", "`@batch(continuous)` needs a generating model")
                    .label(span, "continuous batching")
                    .label(a.span, "on a node whose model does not have `generate = true`")
                    .help("continuous (iteration-level) batching applies to models with `generate = true`; use `@batch(max = N, wait = D)`"));
            }
            Ok(BatchHint::Continuous { max })
        }
        None => {
            if max.is_none() && wait.is_none() {
                return Err(bad(
                    a,
                    args_span(a),
                    "`@batch` needs arguments",
                    "what kind of batching?",
                    HELP,
                ));
            }
            Ok(BatchHint::Dynamic {
                max,
                wait_ms: wait.map(|(ms, _)| ms),
            })
        }
    }
}

/// Check one `slo` statement.
pub(crate) fn check_slo(
    metric: &ast::Path,
    op: ast::SloOp,
    value: &ast::Lit,
    span: Span,
    sink: &mut Sink,
) -> Option<Slo> {
    const METRICS: [&str; 3] = ["latency.p50", "latency.p99", "throughput"];
    let name = metric.text();
    let text = format!("{name} {} {}", op.text(), value.raw);
    let kind = match name.as_str() {
        "latency.p50" | "latency.p99" => {
            if !matches!(op, ast::SloOp::Lt | ast::SloOp::Le) {
                sink.push(
                    Problem::error(
                        "mars::slo::bad_operator",
                        format!("a latency objective is an upper bound: `{name} < …`"),
                    )
                    .label(span, format!("`{}` here", op.text()))
                    .help(format!("write `slo {name} < {}`", value.raw)),
                );
                return None;
            }
            let ast::LitKind::Duration(ms) = value.kind else {
                sink.push(
                    Problem::error(
                        "mars::slo::bad_value",
                        "a latency objective takes a duration",
                    )
                    .label(value.span, "expected a duration like `300ms`"),
                );
                return None;
            };
            if name == "latency.p50" {
                SloKind::LatencyP50Ms(ms)
            } else {
                SloKind::LatencyP99Ms(ms)
            }
        }
        "throughput" => {
            if !matches!(op, ast::SloOp::Gt | ast::SloOp::Ge) {
                sink.push(
                    Problem::error(
                        "mars::slo::bad_operator",
                        "a throughput objective is a lower bound: `throughput >= …`",
                    )
                    .label(span, format!("`{}` here", op.text()))
                    .help(format!("write `slo throughput >= {}`", value.raw)),
                );
                return None;
            }
            let ast::LitKind::Rate(r) = value.kind else {
                sink.push(
                    Problem::error(
                        "mars::slo::bad_value",
                        "a throughput objective takes a rate",
                    )
                    .label(value.span, "expected a rate like `50/s`"),
                );
                return None;
            };
            SloKind::ThroughputPerS(r)
        }
        _ => {
            let mut p = Problem::error(
                "mars::slo::unknown_metric",
                format!("unknown objective `{name}`"),
            )
            .label(metric.span, "not a metric");
            p = match did_you_mean(&name, METRICS) {
                Some(s) => p.help(format!("did you mean `{s}`?")),
                None => p.help("the objectives are latency.p50, latency.p99 and throughput"),
            };
            sink.push(p);
            return None;
        }
    };
    let value_ok = match kind {
        SloKind::LatencyP50Ms(v) | SloKind::LatencyP99Ms(v) | SloKind::ThroughputPerS(v) => {
            v.is_finite() && v > 0.0
        }
    };
    let too_long = match kind {
        SloKind::LatencyP50Ms(v) | SloKind::LatencyP99Ms(v) => {
            v > mars_plan::limits::MAX_DURATION_MS
        }
        SloKind::ThroughputPerS(_) => false,
    };
    if too_long {
        sink.push(
            Problem::error(
                "mars::slo::bad_value",
                "a latency objective is at most 24h (SPEC 7.1)",
            )
            .label(value.span, "too long"),
        );
        return None;
    }
    if !value_ok {
        sink.push(
            Problem::error(
                "mars::slo::bad_value",
                "an objective must be a positive number",
            )
            .label(value.span, "not positive"),
        );
        return None;
    }
    Some(Slo {
        kind,
        text,
        span: span.into(),
    })
}
