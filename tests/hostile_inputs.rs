//! Hostile and careless inputs to `marsc` (issue 16: items 2, 4–7, 10–12): each test pins one
//! finding, running the real binary on real files (data in `tests/hostile/inputs/`). Compiler
//! diagnostics of the same findings are conformance goldens (`tests/conformance/err/`).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value as Json;

fn marsc() -> Command {
    Command::cargo_bin("marsc").expect("the marsc binary is built")
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile/inputs")
        .join(name)
}

/// Copy `name.mars` into `dir` and compile it there; returns the plan's path.
fn compiled(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join(format!("{name}.mars"));
    std::fs::copy(data(&format!("{name}.mars")), &src).expect("copy source");
    let plan = dir.join(format!("{name}.plan.yaml"));
    marsc()
        .arg("compile")
        .arg(&src)
        .arg("-o")
        .arg(&plan)
        .assert()
        .success();
    plan
}

struct Out {
    code: i32,
    stderr: String,
}

fn run_marsc(args: &[&std::ffi::OsStr]) -> Out {
    let o = marsc().args(args).output().expect("marsc runs");
    Out {
        code: o.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn records(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .expect("output written")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Issue 16.2: `$file` reads only regular files inside the input's folder (or one allowed).
#[test]
fn file_inputs_stay_inside_the_allowed_folders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "bytes");
    let requests = dir.path().join("requests");
    std::fs::create_dir(&requests).expect("mkdir");
    std::fs::write(requests.join("ok.bin"), b"hi").expect("write");
    std::fs::write(dir.path().join("secret.txt"), b"secret").expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), requests.join("link"))
        .expect("symlink");
    let fifo = requests.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let lines = [
        r#"{"x": {"$file": "ok.bin"}}"#,
        r#"{"x": {"$file": "/etc/passwd"}}"#,
        r#"{"x": {"$file": "../secret.txt"}}"#,
        r#"{"x": {"$file": "link"}}"#,
        r#"{"x": {"$file": "/proc/self/environ"}}"#,
        r#"{"x": {"$file": "/dev/zero"}}"#,
        r#"{"x": {"$file": "fifo"}}"#,
    ];
    let input = requests.join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    let out = dir.path().join("out.jsonl");
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("-i"),
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("--ordered"),
        os("-q"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = records(&out);
    assert_eq!(recs.len(), lines.len());
    assert_eq!(recs[0]["ok"]["y"]["$base64"], "aGk=");
    for (i, rec) in recs.iter().enumerate().skip(1) {
        assert_eq!(rec["error"]["node"], "input", "line {}: {rec}", i + 1);
        let m = rec["error"]["message"].as_str().expect("message");
        assert!(
            m.contains("outside the folders") || m.contains("not a regular file"),
            "line {}: {m}",
            i + 1
        );
    }
    // Widened with --allow-files, the folder above may be read; from stdin, nothing is
    // readable unless allowed.
    let r = marsc()
        .arg("run")
        .arg(&plan)
        .arg("-q")
        .arg("--allow-files")
        .arg(dir.path())
        .write_stdin(format!(
            "{{\"x\": {{\"$file\": \"{}\"}}}}\n",
            dir.path().join("secret.txt").display()
        ))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("c2VjcmV0"), "{text}");
    let r = marsc()
        .arg("run")
        .arg(&plan)
        .arg("-q")
        .write_stdin(format!(
            "{{\"x\": {{\"$file\": \"{}\"}}}}\n",
            requests.join("ok.bin").display()
        ))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("--allow-files"), "{text}");
}

/// Issue 16.4: a plan whose batch wait is out of range is refused at load with file, line
/// and key (it used to panic the runtime).
#[test]
fn out_of_range_plan_values_are_refused_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "bytes");
    let text = std::fs::read_to_string(&plan).expect("plan");
    let cases = [
        ("wait_ms: ", "wait_ms: 1.0e20 #", "batch.wait_ms"),
        ("replicas: ", "replicas: 100000 #", "replicas"),
        ("max: ", "max: 0 #", "batch.max"),
    ];
    for (from, to, key) in cases {
        let bad = dir.path().join("bad.plan.yaml");
        std::fs::write(&bad, text.replacen(from, to, 1)).expect("write");
        let r = run_marsc(&[os("run"), bad.as_os_str(), os("-q")]);
        assert_eq!(r.code, 1, "{key}: {}", r.stderr);
        assert!(
            r.stderr.contains("bad.plan.yaml:")
                && r.stderr.contains(key)
                && r.stderr.contains("out of range"),
            "{key}: {}",
            r.stderr
        );
    }
}

/// Issue 16.5, 16.12: `--workers`, `--max-inflight` and `--local-cluster` have stated limits.
#[test]
fn run_counts_have_limits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "bytes");
    for (flag, n) in [
        ("--workers", "0"),
        ("--workers", "1000"),
        ("--max-inflight", "0"),
        ("--local-cluster", "100000"),
    ] {
        let r = run_marsc(&[os("run"), plan.as_os_str(), os(flag), os(n), os("-q")]);
        assert_eq!(r.code, 1, "{flag} {n}");
        assert!(
            r.stderr.contains("out of range"),
            "{flag} {n}: {}",
            r.stderr
        );
    }
}

/// Issue 16.5: `@replicas(100000)` no longer compiles.
#[test]
fn huge_replica_counts_do_not_compile() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("r.mars");
    std::fs::write(
        &src,
        "use std.bench.{delay}\npipeline p(x: Int) -> (y: Int) {\n  y = delay(x) @replicas(100000)\n}\n",
    )
    .expect("write");
    let r = run_marsc(&[os("compile"), src.as_os_str()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("at most 256"), "{}", r.stderr);
    assert!(!dir.path().join("r.plan.yaml").exists());
}

/// Issue 16.6: an output that is the input is refused before anything is truncated.
#[test]
fn an_output_that_is_the_input_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "bytes");
    let input = dir.path().join("in.jsonl");
    let body = "{\"x\": {\"$base64\": \"aGk=\"}}\n";
    std::fs::write(&input, body).expect("write");
    let same = dir.path().join(".").join("in.jsonl");
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("-i"),
        input.as_os_str(),
        os("-o"),
        same.as_os_str(),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("mars::io::output_is_input"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&input).expect("input"), body);
    // Nor the plan itself.
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("-i"),
        input.as_os_str(),
        os("-o"),
        plan.as_os_str(),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
}

/// Issue 16.6: a second run writing an output that another holds is refused (the lock).
#[test]
fn a_locked_output_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "bytes");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"x\": {\"$base64\": \"aGk=\"}}\n").expect("write");
    let out = dir.path().join("out.jsonl");
    std::fs::write(&out, "{\"id\":1,\"ok\":{}}\n").expect("write");
    let holder = std::fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .expect("open");
    holder.try_lock().expect("the test takes the lock");
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("-i"),
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("mars::run::output_locked"),
        "{}",
        r.stderr
    );
    // Nothing truncated while another run holds it.
    assert_eq!(
        std::fs::read_to_string(&out).expect("out"),
        "{\"id\":1,\"ok\":{}}\n"
    );
    drop(holder);
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("-i"),
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-q"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(records(&out).len(), 1);
}

/// Issue 16.6: `compile -o X.mars` and an output over the profile are refused; plans are
/// written whole.
#[test]
fn compile_never_overwrites_its_inputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("bytes.mars");
    std::fs::copy(data("bytes.mars"), &src).expect("copy");
    let before = std::fs::read(&src).expect("source");
    let r = run_marsc(&[os("compile"), src.as_os_str(), os("-o"), src.as_os_str()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("mars::io::output_is_source"),
        "{}",
        r.stderr
    );
    let other = dir.path().join("other.mars");
    let r = run_marsc(&[os("compile"), src.as_os_str(), os("-o"), other.as_os_str()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!other.exists());
    assert_eq!(std::fs::read(&src).expect("source"), before);
    // `marsc graph -o` over its own source is refused too.
    let r = run_marsc(&[os("graph"), src.as_os_str(), os("-o"), src.as_os_str()]);
    assert_eq!(r.code, 1);
    assert_eq!(std::fs::read(&src).expect("source"), before);
    // A plan written over a planted link replaces the link, not its target.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep").expect("write");
    let plan = dir.path().join("bytes.plan.yaml");
    std::os::unix::fs::symlink(&victim, &plan).expect("symlink");
    let r = run_marsc(&[os("compile"), src.as_os_str(), os("-o"), plan.as_os_str()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");
    assert!(std::fs::read_to_string(&plan)
        .expect("plan")
        .starts_with("mars_plan: 1"));
}

/// Issue 16.7: `--files-dir` outputs replace planted links instead of writing through them.
#[test]
fn files_dir_outputs_do_not_follow_planted_links() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "bytes");
    let files = dir.path().join("files");
    std::fs::create_dir(&files).expect("mkdir");
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep").expect("write");
    std::os::unix::fs::symlink(&victim, files.join("1-y.bin")).expect("symlink");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"x\": {\"$base64\": \"aGk=\"}}\n").expect("write");
    let out = dir.path().join("out.jsonl");
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("-i"),
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("--files-dir"),
        files.as_os_str(),
        os("-q"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");
    assert_eq!(
        std::fs::read(files.join("1-y.bin")).expect("output file"),
        b"hi"
    );
}

/// Issue 16.10, 16.12: hostile plans (deep types, deep YAML, a BOM) and profiles (a key
/// twice, `/dev/zero`).
#[test]
fn hostile_plans_and_profiles_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "bytes");
    let text = std::fs::read_to_string(&plan).expect("plan");
    let bad = dir.path().join("bad.plan.yaml");
    let deep = format!("{}Bytes{}", "List<".repeat(20_000), ">".repeat(20_000));
    std::fs::write(
        &bad,
        text.replacen(
            "in_types:\n  - Bytes",
            &format!("in_types:\n  - \"{deep}\""),
            1,
        ),
    )
    .expect("write");
    let r = run_marsc(&[os("run"), bad.as_os_str(), os("-q")]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("nest deeper than 100"), "{}", r.stderr);
    std::fs::write(
        &bad,
        format!(
            "{text}notes: {}1{}\n",
            "[".repeat(40_000),
            "]".repeat(40_000)
        ),
    )
    .expect("write");
    let r = run_marsc(&[os("run"), bad.as_os_str(), os("-q")]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nest deeper than 64"), "{}", r.stderr);
    // A byte-order mark is skipped.
    std::fs::write(&bad, format!("\u{feff}{text}")).expect("write");
    let r = marsc()
        .arg("run")
        .arg(&bad)
        .arg("-q")
        .write_stdin("{\"x\": {\"$base64\": \"aGk=\"}}\n")
        .output()
        .expect("runs");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let src = dir.path().join("bytes.mars");
    let r = run_marsc(&[
        os("compile"),
        src.as_os_str(),
        os("--profile"),
        data("dup_nodes.profile.yaml").as_os_str(),
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("is given twice"), "{}", r.stderr);
    let r = run_marsc(&[
        os("compile"),
        src.as_os_str(),
        os("--profile"),
        os("/dev/zero"),
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
}

/// Issue 16.10: `marsc run --verify` checks the plan against its source.
#[test]
fn verify_checks_the_source_hash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "bytes");
    let r = marsc()
        .arg("run")
        .arg(&plan)
        .arg("--verify")
        .arg("-q")
        .write_stdin("{\"x\": {\"$base64\": \"aGk=\"}}\n")
        .output()
        .expect("runs");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let src = dir.path().join("bytes.mars");
    let mut text = std::fs::read_to_string(&src).expect("source");
    text.push_str("// edited\n");
    std::fs::write(&src, text).expect("write");
    let r = run_marsc(&[os("run"), plan.as_os_str(), os("--verify"), os("-q")]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("mars::run::verify"), "{}", r.stderr);
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("--verify"),
        os("--profile"),
        data("dup_nodes.profile.yaml").as_os_str(),
    ]);
    assert_eq!(r.code, 1);
}

/// Issue 16.10, 16.11: a `.npy` with an overflowing shape is an input error; NaN in a tensor
/// output is an output error (as for a Float), and `1e39` into `f32` an input error.
#[test]
fn tensors_with_hostile_shapes_and_non_finite_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "tensor");
    let npy = |shape: &str, data: &[u8]| {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    };
    std::fs::write(
        dir.path().join("huge.npy"),
        npy("(4611686018427387904,)", &[0; 8]),
    )
    .expect("write");
    let nan: Vec<u8> = [1.0f32, f32::NAN]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(dir.path().join("nan.npy"), npy("(2,)", &nan)).expect("write");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"x\": {\"$npy\": \"huge.npy\"}}\n{\"x\": {\"$npy\": \"nan.npy\"}}\n{\"x\": [1.0, 1e39]}\n{\"x\": [1.0, 2.5]}\n",
    )
    .expect("write");
    let out = dir.path().join("out.jsonl");
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("-i"),
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("--ordered"),
        os("-q"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = records(&out);
    assert_eq!(recs[0]["error"]["node"], "input", "{}", recs[0]);
    assert!(recs[0]["error"]["message"]
        .as_str()
        .expect("m")
        .contains("more bytes than memory"));
    assert_eq!(recs[1]["error"]["node"], "output", "{}", recs[1]);
    assert!(recs[1]["error"]["message"]
        .as_str()
        .expect("m")
        .contains("NaN"));
    assert_eq!(recs[2]["error"]["node"], "input", "{}", recs[2]);
    assert_eq!(recs[3]["ok"]["y"], serde_json::json!([1.0, 2.5]));
}

/// Issue 16.12: the request queue is bounded by bytes: with `--max-inflight 1`, 30 requests
/// of 5 MB through a slow node do not all wait in memory (it used to hold them all). Measured
/// against the same run with one request, so that the base RSS and what the allocator keeps of
/// freed memory (mimalloc holds it a while) cancel: holding the 30 would add 145 MiB or more.
#[test]
fn large_requests_do_not_pile_up_in_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "slow_text");
    let line = format!("{{\"x\": \"{}\"}}\n", "a".repeat(5 << 20));
    let peak = |n: usize| -> f64 {
        let input = dir.path().join(format!("in{n}.jsonl"));
        std::fs::write(&input, line.repeat(n)).expect("write");
        let out = dir.path().join("out.jsonl");
        let stats = dir.path().join("stats.json");
        let r = run_marsc(&[
            os("run"),
            plan.as_os_str(),
            os("-i"),
            input.as_os_str(),
            os("-o"),
            out.as_os_str(),
            os("--max-inflight"),
            os("1"),
            os("--stats-json"),
            stats.as_os_str(),
            os("-q"),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(records(&out).len(), n);
        let s: Json =
            serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("json");
        s["peak_rss_mib"].as_f64().expect("peak_rss_mib")
    };
    let (one, thirty) = (peak(1), peak(30));
    assert!(
        thirty < one + 50.0,
        "peak RSS {thirty} MiB for 150 MB of requests, {one} MiB for one 5 MB request"
    );
}

/// Issue 16.12: the dataflow is bounded by bytes too, not only by count. A small PNG decodes to
/// 9 MB of pixels as the request is read; with the default `--max-inflight` (8,192) every one
/// of 60 such requests (540 MB) would wait inside the dataflow at once for the slow node.
#[test]
fn requests_in_flight_are_bounded_by_bytes() {
    use mars_stdlib::image::{encode, Format};
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "slow_image");
    let (width, height) = (2000u32, 1500u32);
    let img = mars_runtime::ImageData {
        width,
        height,
        rgb: vec![200; (width * height * 3) as usize],
    };
    std::fs::write(
        dir.path().join("big.png"),
        encode(&img, Format::Png).expect("png"),
    )
    .expect("write");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"img\": {\"$file\": \"big.png\"}, \"b\": [{\"x\": 0, \"y\": 0, \"w\": 2, \"h\": 2}]}\n"
            .repeat(60),
    )
    .expect("write");
    let peak = |mib: &str| {
        let out = dir.path().join("out.jsonl");
        let stats = dir.path().join("stats.json");
        let r = run_marsc(&[
            os("run"),
            plan.as_os_str(),
            os("-i"),
            input.as_os_str(),
            os("-o"),
            out.as_os_str(),
            os("--max-inflight-mib"),
            os(mib),
            os("--stats-json"),
            stats.as_os_str(),
            os("-q"),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let recs = records(&out);
        assert_eq!(recs.len(), 60);
        assert!(recs.iter().all(|r| r.get("ok").is_some()), "{:?}", recs[0]);
        let s: Json =
            serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("json");
        s["peak_rss_mib"].as_f64().expect("peak_rss_mib")
    };
    let bounded = peak("32");
    assert!(
        bounded < 150.0,
        "peak RSS {bounded} MiB with --max-inflight-mib 32"
    );
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("--max-inflight-mib"),
        os("0"),
        os("-q"),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("--max-inflight-mib 0 is out of range"),
        "{}",
        r.stderr
    );
}

/// Issue 16.12: a builtin node's unknown `params` key is refused when the plan loads.
#[test]
fn unknown_builtin_params_are_refused_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = compiled(dir.path(), "slow_text");
    let text = std::fs::read_to_string(&plan).expect("plan");
    assert!(text.contains("params:"), "the plan has params: {text}");
    let bad = dir.path().join("bad.plan.yaml");
    std::fs::write(&bad, text.replacen("params:", "params:\n    colour: 3", 1)).expect("write");
    let r = run_marsc(&[os("run"), bad.as_os_str(), os("-q")]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("bad.plan.yaml:")
            && r.stderr.contains("`colour` is not a parameter of builtin"),
        "{}",
        r.stderr
    );
    // The plan as compiled still runs.
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"x\": \"ok\"}\n").expect("write");
    let r = run_marsc(&[
        os("run"),
        plan.as_os_str(),
        os("-i"),
        input.as_os_str(),
        os("-q"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// Issue 16.12: NaN and infinite bench parameters are refused.
#[test]
fn non_finite_bench_parameters_are_refused() {
    for v in ["NaN", "inf", "-0.5", "1.5"] {
        let flag = format!("--long-share={v}");
        let r = run_marsc(&[os("bench"), os("continuous"), os(&flag)]);
        assert_eq!(r.code, 2, "{v}: {}", r.stderr);
        assert!(r.stderr.contains("--long-share"), "{v}: {}", r.stderr);
    }
}
