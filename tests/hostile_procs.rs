//! Hostile and careless use of exec programs and clusters (issue 16 items 1, 3, 7, 8, 9 and
//! parts of 12; issue 10 item 2): each test reproduces a finding against real processes and
//! real localhost clusters. Waiting is by polling with a bounded deadline, never a fixed sleep.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value as Json;

fn marsc() -> PathBuf {
    assert_cmd::cargo::cargo_bin("marsc")
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile/procs")
        .join(name)
}

/// A plan the cluster tests share: a chain of delay nodes over workers w0, w1.
fn slow_plan() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/runtime/slow.plan.yaml")
}

/// Poll `ready` every 20 ms until it holds; panic with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn stderr_of(child: Child) -> String {
    let o = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether a process has exited (absent, or a zombie), allowing a bounded moment for a kill.
fn gone(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
            });
        match state.as_deref() {
            None | Some("Z") | Some("X") => return true,
            Some(_) if Instant::now() > deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = StdCommand::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn records(path: &Path) -> BTreeMap<u64, Json> {
    let text = std::fs::read_to_string(path).expect("output written");
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let rec: Json = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let id = rec["id"].as_u64().expect("id");
        assert!(m.insert(id, rec).is_none(), "request {id} written twice");
    }
    m
}

fn int_input(dir: &Path, n: u64) -> PathBuf {
    let p = dir.join("in.jsonl");
    let text: String = (1..=n).map(|i| format!("{{\"x\": {i}}}\n")).collect();
    std::fs::write(&p, text).expect("input");
    p
}

// ---- clusters --------------------------------------------------------------------------------

fn hosts_file(dir: &Path, n: usize) -> (PathBuf, Vec<u16>) {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let ports: Vec<u16> = ls
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let path = dir.join("hosts.txt");
    let text: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(&path, text).expect("hosts");
    (path, ports)
}

fn secret(dir: &Path, name: &str, token: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, token).expect("secret");
    p
}

fn worker(
    hosts: &Path,
    process: usize,
    secret: &Path,
    io: Option<(&Path, &Path)>,
    extra: &[&str],
) -> Child {
    let mut c = StdCommand::new(marsc());
    c.arg("worker")
        .arg(slow_plan())
        .arg("--hosts")
        .arg(hosts)
        .arg("--cluster-secret")
        .arg(secret)
        .arg("--process")
        .arg(process.to_string())
        .arg("-q")
        .args(extra);
    if let Some((input, output)) = io {
        c.arg("--input").arg(input).arg("--output").arg(output);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("marsc worker starts")
}

fn accepting(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn strangers_on_a_forming_clusters_port_are_refused_and_the_run_forms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (hosts, ports) = hosts_file(dir.path(), 2);
    let key = secret(dir.path(), "secret", "the token of this run");
    let input = int_input(dir.path(), 300);
    let out = dir.path().join("out.jsonl");
    let mut p0 = worker(&hosts, 0, &key, Some((&input, &out)), &[]);
    // A port scan: connect and close (this is also how the test learns the port is open).
    wait_for(Duration::from_secs(60), "process 0 to listen", || {
        accepting(ports[0])
    });
    // Garbage bytes, and an HTTP request.
    let mut garbage = TcpStream::connect(("127.0.0.1", ports[0])).expect("connect");
    garbage
        .write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3])
        .expect("write");
    drop(garbage);
    let mut http = TcpStream::connect(("127.0.0.1", ports[0])).expect("connect");
    http.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    http.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = http.read_to_end(&mut answer);
    // An idle connection, held open until the run is over.
    let idle = TcpStream::connect(("127.0.0.1", ports[0])).expect("connect");
    assert!(
        p0.try_wait().expect("wait").is_none(),
        "a stranger killed process 0"
    );

    let mut p1 = worker(&hosts, 1, &key, None, &[]);
    let s0 = exit_within(&mut p0, Duration::from_secs(120)).expect("process 0 finishes");
    let s1 = exit_within(&mut p1, Duration::from_secs(30)).expect("process 1 finishes");
    drop(idle);
    let e0 = stderr_of(p0);
    assert!(s0.success() && s1.success(), "{s0} {s1}: {e0}");
    assert!(e0.contains("refused a connection"), "{e0}");
    let r = records(&out);
    assert_eq!(r.len(), 300);
    assert!(r.values().all(|rec| rec.get("ok").is_some()), "{r:?}");
}

#[test]
fn a_second_cluster_on_the_same_hosts_file_is_refused_and_the_first_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (hosts, ports) = hosts_file(dir.path(), 2);
    let ours = secret(dir.path(), "ours", "run A");
    let theirs = secret(dir.path(), "theirs", "run B");
    let input = int_input(dir.path(), 200);
    let out = dir.path().join("out.jsonl");
    let mut a0 = worker(&hosts, 0, &ours, Some((&input, &out)), &[]);
    wait_for(Duration::from_secs(60), "process 0 to listen", || {
        accepting(ports[0])
    });
    // Process 1 of another run, started with the same hosts file.
    let mut b1 = worker(&hosts, 1, &theirs, None, &[]);
    let sb = exit_within(&mut b1, Duration::from_secs(60)).expect("the stranger gives up");
    assert_eq!(sb.code(), Some(2));
    let eb = stderr_of(b1);
    assert!(eb.contains("not part of this run"), "{eb}");
    assert!(
        a0.try_wait().expect("wait").is_none(),
        "the second cluster killed the first"
    );

    let mut a1 = worker(&hosts, 1, &ours, None, &[]);
    let s0 = exit_within(&mut a0, Duration::from_secs(120)).expect("process 0 finishes");
    let s1 = exit_within(&mut a1, Duration::from_secs(30)).expect("process 1 finishes");
    assert!(s0.success() && s1.success(), "{s0} {s1}: {}", stderr_of(a0));
    assert_eq!(records(&out).len(), 200);
}

#[test]
fn a_stopped_peer_is_noticed_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (hosts, ports) = hosts_file(dir.path(), 2);
    let key = secret(dir.path(), "secret", "stall");
    let input = int_input(dir.path(), 3000);
    let out = dir.path().join("out.jsonl");
    let flags = ["--peer-timeout", "3"];
    let mut p1 = worker(&hosts, 1, &key, None, &flags);
    let mut p0 = worker(&hosts, 0, &key, Some((&input, &out)), &flags);
    wait_for(Duration::from_secs(60), "the run to get going", || {
        lines_in(&out) >= 50
    });
    signal(p1.id(), "-STOP");
    let s0 = exit_within(&mut p0, Duration::from_secs(60));
    signal(p1.id(), "-CONT");
    let _ = p1.kill();
    let _ = p1.wait();
    let s0 = s0.expect("process 0 stops instead of waiting forever");
    assert_eq!(s0.code(), Some(2));
    let e0 = stderr_of(p0);
    assert!(e0.contains("mars::cluster::stalled"), "{e0}");
    assert!(
        e0.contains(&format!(
            "process 1 (127.0.0.1:{}) sent no heartbeat",
            ports[1]
        )),
        "{e0}"
    );
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                pids.push(name);
            }
        }
    }
    pids
}

#[test]
fn the_local_clusters_hosts_file_is_private_and_gone_after_sigterm() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tempfile::tempdir().expect("work dir");
    let input = int_input(work.path(), 3000);
    let out = work.path().join("out.jsonl");
    let mut run = StdCommand::new(marsc())
        .arg("run")
        .arg(slow_plan())
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .args(["-q", "--local-cluster", "2"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("marsc starts");
    let entries = || -> Vec<PathBuf> {
        std::fs::read_dir(tmp.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(60), "the cluster's folder", || {
        !entries().is_empty()
    });
    let folder = entries().remove(0);
    let meta = std::fs::symlink_metadata(&folder).expect("metadata");
    assert!(meta.is_dir(), "{} is not a folder", folder.display());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    for f in ["hosts", "token"] {
        let m = std::fs::symlink_metadata(folder.join(f)).expect("file");
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
    }
    wait_for(Duration::from_secs(60), "the run to get going", || {
        lines_in(&out) >= 20
    });
    let children = processes_mentioning(&folder.to_string_lossy());
    assert!(!children.is_empty(), "no cluster children found");
    signal(run.id(), "-TERM");
    let status = exit_within(&mut run, Duration::from_secs(30)).expect("marsc stops on SIGTERM");
    assert!(!status.success());
    assert!(entries().is_empty(), "left behind: {:?}", entries());
    for c in &children {
        assert!(gone(c), "cluster process {c} outlived marsc");
    }
}

// ---- exec programs --------------------------------------------------------------------------

const TARGET: &str = "mars_target: 1\nworkers:\n  - {name: w0, cpus: 2, memory_gb: 8}\n";

/// Compile a one-node pipeline whose node runs `hostile.py ARGS`, in a fresh folder.
fn exec_plan(args: &str, annotation: &str, timeout_ms: Option<u64>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = format!(
        "fn f(text: Text) -> Text = exec \"python3 {} {args}\"\n\n\
         pipeline app(text: Text) -> (out: Text) {{\n  out = f(text)  {annotation}\n}}\n",
        data("hostile.py").display()
    );
    std::fs::write(dir.path().join("app.mars"), source).expect("source");
    std::fs::write(dir.path().join("target.yaml"), TARGET).expect("target");
    Command::new(marsc())
        .current_dir(dir.path())
        .args([
            "compile",
            "app.mars",
            "--target",
            "target.yaml",
            "-o",
            "app.plan.yaml",
        ])
        .assert()
        .success();
    if let Some(ms) = timeout_ms {
        let path = dir.path().join("app.plan.yaml");
        let plan = std::fs::read_to_string(&path).expect("plan");
        assert!(plan.contains("timeout_ms: 30000"), "{plan}");
        std::fs::write(
            &path,
            plan.replace("timeout_ms: 30000", &format!("timeout_ms: {ms}")),
        )
        .expect("edit plan");
    }
    dir
}

fn write_texts(dir: &Path, texts: &[&str]) -> PathBuf {
    let p = dir.join("in.jsonl");
    let text: String = texts
        .iter()
        .map(|t| format!("{{\"text\": \"{t}\"}}\n"))
        .collect();
    std::fs::write(&p, text).expect("input");
    p
}

/// `marsc run` the plan in `dir` over `texts` (bounded in time); the records by id.
fn run_texts(dir: &Path, texts: &[&str]) -> BTreeMap<u64, Json> {
    write_texts(dir, texts);
    let o = Command::new(marsc())
        .current_dir(dir)
        .args([
            "run",
            "app.plan.yaml",
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "-q",
        ])
        .timeout(Duration::from_secs(180))
        .output()
        .expect("marsc runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = records(&dir.join("out.jsonl"));
    assert_eq!(r.len(), texts.len(), "one record per request");
    r
}

fn ok(r: &Json) -> Option<&str> {
    r.get("ok").and_then(|o| o["out"].as_str())
}

fn error(r: &Json) -> String {
    r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn endless_blank_or_stale_lines_time_out_like_silence() {
    for mode in ["blank", "stale"] {
        let dir = exec_plan(mode, "@batch(none)", Some(3000));
        let r = run_texts(dir.path(), &["a"]);
        assert!(
            error(&r[&1]).contains("did not answer within 3000 ms"),
            "{mode}: {:?}",
            r[&1]
        );
    }
}

#[test]
fn a_response_line_has_a_size_limit() {
    let dir = exec_plan("huge", "@batch(none)", None);
    let r = run_texts(dir.path(), &["a"]);
    assert!(error(&r[&1]).contains("longer than 64 MiB"), "{:?}", r[&1]);
}

#[test]
fn a_request_that_crashes_the_program_fails_alone() {
    // Batches of up to 16 gather while the program works: the crash shares its batch.
    let dir = exec_plan(
        "poison",
        "@batch(max = 16, wait = 200ms) @replicas(1)",
        None,
    );
    let mut texts: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    texts[7] = "crash 1".into();
    texts[23] = "crash 2".into();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let r = run_texts(dir.path(), &refs);
    for (id, rec) in &r {
        let text = &texts[(*id - 1) as usize];
        if text.starts_with("crash") {
            let e = error(rec);
            assert!(e.contains("crashed the program"), "{e}");
            assert!(e.contains("exit status 9"), "{e}");
            assert!(e.contains("poisoned by a request"), "{e}");
        } else {
            assert_eq!(ok(rec), Some(text.as_str()), "{rec}");
        }
    }
}

#[test]
fn start_up_chatter_on_stdout_is_not_an_answer() {
    let dir = exec_plan("banner", "@batch(none)", None);
    let r = run_texts(dir.path(), &["a", "b"]);
    assert_eq!(ok(&r[&1]), Some("a"), "{:?}", r[&1]);
    assert_eq!(ok(&r[&2]), Some("b"));
}

#[test]
fn a_program_closing_its_stdout_is_noticed_through_the_shell() {
    // A long timeout: only seeing the pipe close ends this request early.
    let dir = exec_plan("closeout", "@batch(none)", Some(600_000));
    let r = run_texts(dir.path(), &["a"]);
    assert!(error(&r[&1]).contains("closed its output"), "{:?}", r[&1]);
}

#[test]
fn a_programs_children_do_not_outlive_the_run() {
    let dir = exec_plan("grandchild grandchild.pid", "@batch(none)", None);
    let r = run_texts(dir.path(), &["a", "b"]);
    assert_eq!(ok(&r[&1]), Some("a"));
    let pid = std::fs::read_to_string(dir.path().join("grandchild.pid")).expect("pid written");
    assert!(gone(&pid), "the program's child {pid} outlived the run");
}

#[test]
fn sigterm_and_sigint_stop_busy_exec_programs() {
    for sig in ["-TERM", "-INT"] {
        let dir = exec_plan("busy busy.pid", "@batch(none)", None);
        write_texts(dir.path(), &["a"]);
        let mut run = StdCommand::new(marsc())
            .current_dir(dir.path())
            .args([
                "run",
                "app.plan.yaml",
                "-i",
                "in.jsonl",
                "-o",
                "out.jsonl",
                "-q",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("marsc starts");
        let pid_file = dir.path().join("busy.pid");
        wait_for(Duration::from_secs(60), "the program to be busy", || {
            pid_file.exists()
        });
        let pid = std::fs::read_to_string(&pid_file).expect("pid");
        signal(run.id(), sig);
        let status = exit_within(&mut run, Duration::from_secs(30)).expect("marsc stops");
        assert!(!status.success(), "{sig}");
        assert!(gone(&pid), "{sig}: the busy program {pid} outlived marsc");
    }
}
