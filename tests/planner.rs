//! `marsc compile` and `marsc plan diff` as a user runs them, on the fixtures in
//! `tests/planner/`. The golden plan `tests/planner/app.plan.yaml` is rewritten by running the
//! tests with `MARS_BLESS=1`.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use mars_plan::{BatchPolicy, Device, Plan};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/planner")
}

/// A scratch folder holding a copy of every fixture, so that plans name their source as
/// `app.mars` wherever the repository lives.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(fixtures()).expect("fixtures") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    dir
}

fn marsc(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("marsc").expect("marsc builds");
    cmd.current_dir(dir);
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(dir: &Path, args: &[&str]) -> Run {
    let out = marsc(dir).args(args).output().expect("marsc runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn read_plan(path: &Path) -> Plan {
    let text = std::fs::read_to_string(path).expect("plan written");
    Plan::from_yaml(&text, "plan").expect("a valid plan")
}

#[test]
fn compile_writes_the_golden_plan() {
    let dir = scratch();
    let r = run(
        dir.path(),
        &[
            "compile",
            "app.mars",
            "--profile",
            "app.profile.yaml",
            "--target",
            "one_gpu.yaml",
            "-o",
            "app.plan.yaml",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("wrote app.plan.yaml"), "{}", r.stderr);
    let text = std::fs::read_to_string(dir.path().join("app.plan.yaml")).expect("written");
    let golden = fixtures().join("app.plan.yaml");
    if std::env::var_os("MARS_BLESS").is_some() {
        std::fs::write(&golden, &text).expect("bless");
    }
    let expected =
        std::fs::read_to_string(&golden).expect("golden plan exists (run with MARS_BLESS=1)");
    assert_eq!(
        text, expected,
        "the plan differs from tests/planner/app.plan.yaml"
    );

    // What the golden plan says, worked out by hand from the cost model: `out` (exec, fixed at
    // 2 replicas, 12 ms per batch of 4) bounds the pipeline at 2·4000/12 = 666.667/s; `vec`
    // goes to the GPU with batches of 8 (lower p99 than 16 at the same throughput).
    let plan = read_plan(&dir.path().join("app.plan.yaml"));
    assert_eq!(plan.predicted.throughput, 666.667);
    assert_eq!(plan.predicted.bottleneck, "out");
    assert_eq!(plan.inputs_of_plan.source, "app.mars");
    assert!(plan.inputs_of_plan.source_hash.starts_with("sha256:"));
    assert!(plan
        .inputs_of_plan
        .profile_hash
        .as_deref()
        .is_some_and(|h| h.len() == 71));
    let vec = plan.node("vec").expect("node vec");
    assert_eq!(
        (
            vec.device,
            vec.gpu.as_deref(),
            vec.batch.policy,
            vec.batch.max
        ),
        (Device::Gpu, Some("gpu0"), BatchPolicy::Dynamic, 8)
    );
    let out = plan.node("out").expect("node out");
    assert_eq!(
        (out.replicas, out.batch.max, out.timeout_ms),
        (2, 4, Some(30_000))
    );
    assert_eq!(out.implementation.exec.as_deref(), Some("python3 post.py"));
    assert_eq!(plan.slos.len(), 1);
    assert!(plan.slos[0].met);
}

#[test]
fn compiling_twice_gives_the_same_bytes() {
    let dir = scratch();
    let args = [
        "compile",
        "app.mars",
        "--profile",
        "app.profile.yaml",
        "--target",
        "one_gpu.yaml",
        "-o",
    ];
    let a = run(dir.path(), &[&args[..], &["a.plan.yaml"]].concat());
    let b = run(dir.path(), &[&args[..], &["b.plan.yaml"]].concat());
    assert_eq!((a.code, b.code), (0, 0), "{}{}", a.stderr, b.stderr);
    let a = std::fs::read(dir.path().join("a.plan.yaml")).expect("a");
    let b = std::fs::read(dir.path().join("b.plan.yaml")).expect("b");
    assert_eq!(a, b);
}

#[test]
fn explain_prints_the_table_bottleneck_headroom_and_what_ifs() {
    let dir = scratch();
    let r = run(
        dir.path(),
        &[
            "compile",
            "app.mars",
            "--profile",
            "app.profile.yaml",
            "--target",
            "one_gpu.yaml",
            "-o",
            "app.plan.yaml",
            "--explain",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "pipeline `app`: 666.667/s",
        "node ",
        "cleaned",
        "gpu gpu0@w0",
        "bottleneck: out — node `out` at its `@replicas(2)`",
        "binding constraint:",
        "critical path: the path cleaned → vec → out",
        "headroom at 666.667/s:",
        "w0.cpu:",
        "gpu0 (w0):",
        "latency.p99 < 300ms: predicted",
        "another GPU like `gpu0` on `w0`: 666.667/s",
        "4 more cores on `w0`",
        "no `@replicas(2)` on `out`: 1000/s (+50.0%)",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?} in:\n{}",
            r.stdout
        );
    }
}

#[test]
fn without_profile_or_target_it_plans_from_defaults_and_says_so() {
    let dir = scratch();
    let r = run(dir.path(), &["compile", "app.mars", "-o", "app.plan.yaml"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("no --profile"), "{}", r.stderr);
    assert!(r.stderr.contains("no target given"), "{}", r.stderr);
    let plan = read_plan(&dir.path().join("app.plan.yaml"));
    assert!(
        plan.notes.iter().any(|n| n.contains("without a profile")),
        "{:?}",
        plan.notes
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("one CPU worker `local`")),
        "{:?}",
        plan.notes
    );
    assert_eq!(plan.inputs_of_plan.profile_hash, None);
    assert!(plan
        .nodes
        .iter()
        .all(|n| n.device == Device::Cpu && n.worker == "local"));
}

#[test]
fn device_gpu_on_a_cpu_target_points_at_the_annotation() {
    let dir = scratch();
    let r = run(
        dir.path(),
        &[
            "compile",
            "gpu_needed.mars",
            "--target",
            "cpu.yaml",
            "-o",
            "x.plan.yaml",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("mars::plan::device_unavailable"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("gpu_needed.mars:6:"), "{}", r.stderr);
    assert!(
        r.stderr.contains("node `out` must run on the gpu"),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("x.plan.yaml").exists());
}

#[test]
fn an_unreachable_slo_fails_unless_allowed() {
    let dir = scratch();
    let args = [
        "compile",
        "fast.mars",
        "--profile",
        "app.profile.yaml",
        "--target",
        "cpu.yaml",
        "-o",
        "fast.plan.yaml",
    ];
    let r = run(dir.path(), &args);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("mars::plan::slo_unmet"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("no plan meets `slo throughput >= 5000/s`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("the best reachable is"), "{}", r.stderr);
    assert!(r.stderr.contains("fast.mars:10:"), "{}", r.stderr);
    assert!(!dir.path().join("fast.plan.yaml").exists());

    let r = run(dir.path(), &[&args[..], &["--allow-slo-miss"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("is not met"), "{}", r.stderr);
    let plan = read_plan(&dir.path().join("fast.plan.yaml"));
    assert!(!plan.slos[0].met);
    assert!(plan.slos[0].predicted < 5000.0);
}

#[test]
fn malformed_profiles_and_targets_name_file_key_and_line() {
    let dir = scratch();
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "--profile",
            "mismatched.profile.yaml",
            &[
                "mismatched.profile.yaml:8",
                "nodes.embed.cpu.latency_ms",
                "same length",
            ],
        ),
        (
            "--profile",
            "zero_latency.profile.yaml",
            &[
                "zero_latency.profile.yaml:4",
                "nodes.prep.cpu.latency_ms",
                "must be positive",
            ],
        ),
        (
            "--profile",
            "missing_kind.profile.yaml",
            &[
                "missing_kind.profile.yaml:2",
                "nodes.embed",
                "mars::plan::missing_profile",
                "app.mars:8:",
            ],
        ),
        (
            "--target",
            "bad.target.yaml",
            &["bad.target.yaml:6", "workers[1].cpus", "must be positive"],
        ),
    ];
    for (flag, file, needles) in cases {
        let r = run(
            dir.path(),
            &["compile", "app.mars", flag, file, "-o", "x.plan.yaml"],
        );
        assert_ne!(r.code, 0, "{file} was accepted");
        for needle in needles {
            assert!(
                r.stderr.contains(needle),
                "{file}: missing {needle:?} in:\n{}",
                r.stderr
            );
        }
    }
    assert!(!dir.path().join("x.plan.yaml").exists());
}

#[test]
fn multi_worker_targets_place_nodes_on_workers() {
    let dir = scratch();
    let r = run(
        dir.path(),
        &[
            "compile",
            "app.mars",
            "--profile",
            "app.profile.yaml",
            "--target",
            "two_workers.yaml",
            "-o",
            "w.plan.yaml",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan = read_plan(&dir.path().join("w.plan.yaml"));
    assert!(plan
        .nodes
        .iter()
        .all(|n| n.worker == "w0" || n.worker == "w1"));
    assert!(plan.nodes.iter().all(|n| n.device == Device::Cpu));
}

#[test]
fn plan_diff_reports_changes_like_diff() {
    let dir = scratch();
    for (target, out) in [
        ("one_gpu.yaml", "gpu.plan.yaml"),
        ("cpu.yaml", "cpu.plan.yaml"),
    ] {
        let r = run(
            dir.path(),
            &[
                "compile",
                "app.mars",
                "--profile",
                "app.profile.yaml",
                "--target",
                target,
                "-o",
                out,
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let r = run(
        dir.path(),
        &["plan", "diff", "gpu.plan.yaml", "gpu.plan.yaml"],
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "no changes\n"));

    let r = run(
        dir.path(),
        &["plan", "diff", "gpu.plan.yaml", "cpu.plan.yaml"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    for needle in [
        "--- gpu.plan.yaml",
        "+++ cpu.plan.yaml",
        "target_hash: sha256:",
        "throughput: 666.667/s →",
        "node vec: placement gpu gpu0@w0 → cpu@w0",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?} in:\n{}",
            r.stdout
        );
    }

    let r = run(
        dir.path(),
        &["plan", "diff", "gpu.plan.yaml", "nope.plan.yaml"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nope.plan.yaml"), "{}", r.stderr);
}

#[test]
fn several_pipelines_need_a_choice_and_plans_name_their_source_relative_to_themselves() {
    let dir = scratch();
    let r = run(
        dir.path(),
        &[
            "compile",
            "two.mars",
            "--profile",
            "app.profile.yaml",
            "--target",
            "cpu.yaml",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("several pipelines (first, second); choose one with --pipeline"),
        "{}",
        r.stderr
    );

    let r = run(
        dir.path(),
        &[
            "compile",
            "two.mars",
            "--pipeline",
            "nope",
            "--profile",
            "app.profile.yaml",
            "--target",
            "cpu.yaml",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("has no pipeline `nope`; it has: first, second"),
        "{}",
        r.stderr
    );

    // Without -o the plan lands beside the source.
    let r = run(
        dir.path(),
        &[
            "compile",
            "two.mars",
            "--pipeline",
            "second",
            "--profile",
            "app.profile.yaml",
            "--target",
            "cpu.yaml",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan = read_plan(&dir.path().join("two.plan.yaml"));
    assert_eq!(plan.pipeline, "second");
    assert_eq!(plan.inputs_of_plan.source, "two.mars");
    assert_eq!(
        plan.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        vec!["cleaned", "out"]
    );

    // A plan in a new subfolder names its source from there.
    let r = run(
        dir.path(),
        &[
            "compile",
            "two.mars",
            "--pipeline",
            "first",
            "--profile",
            "app.profile.yaml",
            "--target",
            "cpu.yaml",
            "-o",
            "plans/deep/first.plan.yaml",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan = read_plan(&dir.path().join("plans/deep/first.plan.yaml"));
    assert_eq!(plan.inputs_of_plan.source, "../../two.mars");
}

#[test]
fn a_profile_written_by_marsc_profile_plans() {
    let dir = scratch();
    let r = run(
        dir.path(),
        &[
            "profile",
            "bench_loop.mars",
            "--target",
            "cpu.yaml",
            "-o",
            "loop.profile.yaml",
            "--max-batch",
            "4",
            "--min-runs",
            "2",
            "--min-time-ms",
            "20",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        dir.path(),
        &[
            "compile",
            "bench_loop.mars",
            "--profile",
            "loop.profile.yaml",
            "--target",
            "cpu.yaml",
            "-o",
            "loop.plan.yaml",
            "--explain",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan = read_plan(&dir.path().join("loop.plan.yaml"));
    assert_eq!(
        plan.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b", "out"]
    );
    // The profiler measures up to `--max-batch` and every bound the unprofiled plan sets:
    // these `@batchable` bench nodes take up to 256 queued items there (SPEC 2.4.8), so the
    // planner may choose any measured size up to that, and no larger.
    assert!(plan
        .nodes
        .iter()
        .all(|n| n.batch.max <= 256 && n.replicas >= 1));
    assert!(plan.predicted.throughput > 0.0);
    assert!(plan.slos[0].met, "{:?}", plan.slos);
    // The CPU pool binds (two spinning nodes), and more cores buy more throughput.
    assert_eq!(plan.predicted.bottleneck, "w0.cpu");
    assert!(r.stdout.contains("4 more cores on `w0`"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("GPU"),
        "no kind was measured on a GPU:\n{}",
        r.stdout
    );
}

/// A generating model costed per decode step (SPEC 2.4.7): without an SLO the planner runs it
/// continuously; under a p99 SLO that continuous batches miss (a 64-step reply waits on every
/// step of 16 sequences and their prefills), static batches of 4. The plan is golden.
#[test]
fn compile_plans_a_generating_model_by_policy() {
    let dir = scratch();
    let args = [
        "compile",
        "generate.mars",
        "--profile",
        "generate.profile.yaml",
        "--target",
        "cpu.yaml",
        "-o",
        "generate.plan.yaml",
        "--explain",
    ];
    let r = run(dir.path(), &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(dir.path().join("generate.plan.yaml")).expect("written");
    let golden = fixtures().join("generate.plan.yaml");
    if std::env::var_os("MARS_BLESS").is_some() {
        std::fs::write(&golden, &text).expect("bless");
    }
    let expected =
        std::fs::read_to_string(&golden).expect("golden plan exists (run with MARS_BLESS=1)");
    assert_eq!(
        text, expected,
        "the plan differs from tests/planner/generate.plan.yaml"
    );
    let plan = read_plan(&dir.path().join("generate.plan.yaml"));
    let reply = plan.node("reply").expect("node reply");
    assert_eq!(
        (reply.batch.policy, reply.batch.max, reply.batch.wait_ms),
        (BatchPolicy::Continuous, 16, 0.0)
    );
    // Lengths 4, 16, 64 steps (60/30/10%): E[L] = 13.6. s(16) = 4.4 ms; 16/13.6 sequences join
    // per step, prefilled at f(1.176) = 3.176 ms: T = 13.6·4.4/16 + 3.176/1.176 = 6.440 ms an
    // item; four one-core replicas on four cores serve 4000/T = 621.1/s.
    let g = 16.0f64 / 13.6;
    let f = 3.0 + (g - 1.0) / 3.0;
    let t = 13.6 * 4.4 / 16.0 + f / g;
    assert!(
        (reply.predicted.throughput - 4000.0 / t).abs() < 1e-3,
        "{} vs {}",
        reply.predicted.throughput,
        4000.0 / t
    );
    for policy in ["    none ", "    dynamic ≤16 ", "    continuous ≤16 "] {
        assert!(
            r.stdout.lines().any(|l| l.starts_with(policy)),
            "{policy}: {}",
            r.stdout
        );
    }
    assert!(r
        .stdout
        .lines()
        .any(|l| l.starts_with("    continuous ≤16 ") && l.ends_with("← chosen")));

    let source = std::fs::read_to_string(dir.path().join("generate.mars")).expect("source");
    let with_slo = source.replace(
        "  reply = Chat(cleaned)\n",
        "  reply = Chat(cleaned)\n  slo latency.p99 < 200ms\n",
    );
    assert_ne!(source, with_slo);
    std::fs::write(dir.path().join("generate.mars"), with_slo).expect("write");
    let r = run(dir.path(), &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan = read_plan(&dir.path().join("generate.plan.yaml"));
    let reply = plan.node("reply").expect("node reply");
    assert_eq!(
        (reply.batch.policy, reply.batch.max),
        (BatchPolicy::Dynamic, 4)
    );
    assert!(plan.slos[0].met, "{:?}", plan.slos);
}

/// `--rate R` plans for an offered load (SPEC 2.4.10): the plan records R, its p99 at R includes
/// queueing and is no worse than the saturation plan's at R, `--explain` prints the latency by
/// load, and a rate above what any plan carries is refused with the capacity. The plan is
/// golden (`tests/planner/app.rate.plan.yaml`, rewritten with `MARS_BLESS=1`).
#[test]
fn compile_with_a_rate_plans_for_that_load() {
    let dir = scratch();
    let base = [
        "compile",
        "app.mars",
        "--profile",
        "app.profile.yaml",
        "--target",
        "one_gpu.yaml",
        "-o",
    ];
    let r = run(
        dir.path(),
        &[&base[..], &["rate.plan.yaml", "--rate", "50", "--explain"]].concat(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("at 50/s offered"), "{}", r.stderr);
    for needle in [
        "objective: carry the offered load of 50/s (`--rate`) with the lowest p99",
        "queueing for a replica at 50/s",
        "predicted latency by offered load",
        "planned for",
        "at 100% of capacity",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?} in:\n{}",
            r.stdout
        );
    }
    let text = std::fs::read_to_string(dir.path().join("rate.plan.yaml")).expect("written");
    let golden = fixtures().join("app.rate.plan.yaml");
    if std::env::var_os("MARS_BLESS").is_some() {
        std::fs::write(&golden, &text).expect("bless");
    }
    let expected =
        std::fs::read_to_string(&golden).expect("golden plan exists (run with MARS_BLESS=1)");
    assert_eq!(
        text, expected,
        "the plan differs from tests/planner/app.rate.plan.yaml"
    );
    let plan = read_plan(&dir.path().join("rate.plan.yaml"));
    assert_eq!(plan.rate, Some(50.0));
    assert!(plan.predicted.throughput > 50.0);
    assert!(plan.slos[0].met);

    // The saturation plan records no rate and waits for batches that at 50/s take long to
    // fill: at 50/s nothing batches.
    let r = run(dir.path(), &[&base[..], &["sat.plan.yaml"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let sat = read_plan(&dir.path().join("sat.plan.yaml"));
    assert_eq!(sat.rate, None);
    let wait = |p: &Plan| p.nodes.iter().map(|n| n.batch.wait_ms).sum::<f64>();
    assert_eq!(wait(&plan), 0.0);
    assert!(wait(&sat) > 0.0);

    // Over capacity: refused, naming the most any plan carries.
    let r = run(
        dir.path(),
        &[&base[..], &["x.plan.yaml", "--rate", "5000"]].concat(),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("mars::plan::rate_unreachable"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("offered load of 5000/s"), "{}", r.stderr);
    assert!(!dir.path().join("x.plan.yaml").exists());
    // Not a rate.
    let r = run(
        dir.path(),
        &[&base[..], &["x.plan.yaml", "--rate", "0"]].concat(),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not a positive rate"), "{}", r.stderr);
}
