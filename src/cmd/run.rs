//! `marsc run PLAN --input F.jsonl --output F.jsonl`: run a compiled plan over a file of requests.
//! The running itself is `mars_runtime::run_plan`; this file opens the files, draws the
//! progress bar and prints the summary.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use miette::{miette, IntoDiagnostic, WrapErr};

use mars_plan::Plan;
use mars_runtime::cluster::Cluster;
use mars_runtime::run::{Progress, RunOptions, DEFAULT_MAX_INFLIGHT};

/// `--max-inflight-mib`'s default: the runtime's bound on request bytes in flight.
const DEFAULT_MAX_INFLIGHT_MIB: usize = mars_runtime::dataflow::source::MAX_INFLIGHT_BYTES >> 20;
use mars_runtime::RunError;

#[derive(clap::Args)]
pub struct Args {
    /// The compiled plan (`*.plan.yaml`).
    pub plan: PathBuf,
    /// Requests, one JSON object per line keyed by the pipeline's inputs (`-` for stdin).
    #[arg(short, long, default_value = "-")]
    pub input: PathBuf,
    /// Where to write one record per request (`-` for stdout).
    #[arg(short, long, default_value = "-")]
    pub output: PathBuf,
    /// Timely worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// At most this many requests inside the dataflow at once (bounds memory).
    #[arg(long, default_value_t = DEFAULT_MAX_INFLIGHT)]
    pub max_inflight: usize,
    /// At most this many MiB of request values inside the dataflow at once (bounds memory
    /// when requests are large; one request is always admitted).
    #[arg(long, default_value_t = DEFAULT_MAX_INFLIGHT_MIB)]
    pub max_inflight_mib: usize,
    /// Write records in input order (default: completion order).
    #[arg(long)]
    pub ordered: bool,
    /// Stop at the first error record and exit 1.
    #[arg(long)]
    pub fail_fast: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// Write a Chrome/Perfetto trace (one track per node replica, one slice per batch).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// No progress bar and no summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Skip requests whose ids already have records in `--output` and append the rest (after
    /// a crash). A cut-off last line is removed first.
    #[arg(long)]
    pub resume: bool,
    /// Run as process 0 of a cluster whose processes are listed here (`host:port` a line, in
    /// the plan's worker order); start the others with `marsc worker`.
    #[arg(long, conflicts_with = "local_cluster")]
    pub hosts: Option<PathBuf>,
    /// Start a cluster of N processes on 127.0.0.1 (this one is process 0), for development
    /// and tests.
    #[arg(long, value_name = "N")]
    pub local_cluster: Option<usize>,
    /// In a cluster: seconds to wait for every process to connect before exiting with an error
    /// (status 2) that names the hosts.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub connect_timeout: f64,
    /// In a cluster: a file holding the run token every process of the run shares; a process
    /// that does not know it cannot join (see docs/cluster.md). `--local-cluster` makes one.
    #[arg(long, value_name = "FILE")]
    pub cluster_secret: Option<PathBuf>,
    /// In a cluster: a process whose heartbeat is silent this many seconds (stopped, hung,
    /// cut off) ends the run with status 2, naming it.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub peer_timeout: f64,
    /// Write `Bytes` and `Image` outputs as files in this folder (created if missing), named
    /// `ID-OUTPUT.EXT`, and put `{"$file": "…"}` in the records instead of base64.
    #[arg(long, value_name = "DIR")]
    pub files_dir: Option<PathBuf>,
    /// Let `{"$file": …}` and `{"$npy": …}` in requests read files inside DIR too (repeatable;
    /// by default only inside the input file's folder, and nowhere for stdin).
    #[arg(long, value_name = "DIR")]
    pub allow_files: Vec<PathBuf>,
    /// Before running, check the plan's recorded hashes: of its source (always) and of the
    /// profile and target it was compiled from (give them with --profile and --target).
    #[arg(long)]
    pub verify: bool,
    /// With --verify: the profile the plan was compiled from.
    #[arg(long, requires = "verify")]
    pub profile: Option<PathBuf>,
    /// With --verify: the target the plan was compiled from.
    #[arg(long, requires = "verify")]
    pub target: Option<PathBuf>,
    /// `on`: move replicas between nodes within their plan ranges as the measured costs
    /// demand (SPEC 10); `off`: the plan's replicas, fixed.
    #[arg(long, value_enum, default_value_t = Elastic::Off)]
    pub elastic: Elastic,
}

/// `--elastic on|off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Elastic {
    On,
    Off,
}

impl Args {
    /// The flags' defaults, for running `plan` from stdin to stdout.
    pub fn for_plan(plan: PathBuf) -> Args {
        Args {
            plan,
            input: PathBuf::from("-"),
            output: PathBuf::from("-"),
            workers: 1,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_inflight_mib: DEFAULT_MAX_INFLIGHT_MIB,
            ordered: false,
            fail_fast: false,
            stats_json: None,
            trace: None,
            quiet: false,
            resume: false,
            hosts: None,
            local_cluster: None,
            connect_timeout: 60.0,
            cluster_secret: None,
            peer_timeout: 30.0,
            files_dir: None,
            allow_files: Vec::new(),
            verify: false,
            profile: None,
            target: None,
            elastic: Elastic::Off,
        }
    }
}

/// `--connect-timeout` as a duration; it must be a positive number of seconds.
pub fn connect_timeout(secs: f64) -> miette::Result<Duration> {
    seconds(secs, "--connect-timeout")
}

/// A flag's positive number of seconds (at most a day) as a duration.
pub fn seconds(secs: f64, flag: &str) -> miette::Result<Duration> {
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(miette!(
            code = "mars::cluster::timeout",
            "{flag} must be a positive number of seconds (at most 86400), got {secs}"
        ))
    }
}

/// The run token in `--cluster-secret FILE` (surrounding whitespace trimmed; not empty).
pub fn read_secret(path: Option<&Path>) -> miette::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read --cluster-secret {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(miette!(
            code = "mars::cluster::secret",
            "--cluster-secret {} is empty",
            path.display()
        ));
    }
    Ok(Some(token.to_string()))
}

/// The cluster this process is part of, from the flags.
fn cluster_of(args: &Args, hosts: Vec<String>, process: usize) -> miette::Result<Cluster> {
    Ok(Cluster {
        hosts,
        process,
        token: read_secret(args.cluster_secret.as_deref())?,
    })
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Load a plan file; also the folder its relative paths resolve against (the source's folder).
pub fn load_plan(path: &Path) -> miette::Result<(Plan, PathBuf)> {
    let name = path.display().to_string();
    let text = super::file_io::read_input_text(path, "plan", mars_plan::limits::MAX_YAML_BYTES)?;
    let plan =
        Plan::from_yaml(&text, &name).map_err(|e| miette!(code = "mars::run::plan", "{e}"))?;
    let known = mars_compiler::builtin_params(&super::check::stdlib_sources());
    mars_plan::validate::check_builtin_params(&plan, &text, &name, &known)
        .map_err(|e| miette!(code = "mars::run::plan", "{e}"))?;
    let source = folder_of(path).join(&plan.inputs_of_plan.source);
    Ok((plan, folder_of(&source)))
}

fn progress_bar(quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet {
        return None;
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template("{spinner} {msg}").ok()?;
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

fn run_error(e: RunError) -> miette::Report {
    let code = match &e {
        RunError::Plan(_) => "mars::run::plan",
        RunError::Build { .. } => "mars::run::build",
        RunError::Input(_) => "mars::run::input",
        RunError::Output(_) => "mars::run::output",
        RunError::Runtime(_) => "mars::run::runtime",
        RunError::Cluster(f) => f.code,
    };
    miette!(code = code, "{e}")
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    check_counts(&args)?;
    if (args.local_cluster.is_some() || args.hosts.is_some()) && args.output.as_os_str() == "-" {
        return Err(cluster_stdout());
    }
    if let Some(n) = args.local_cluster {
        return local_cluster(args, n);
    }
    let cluster = match &args.hosts {
        Some(path) => Some(cluster_of(&args, read_hosts(path)?, 0)?),
        None => None,
    };
    execute(args, cluster)
}

fn cluster_stdout() -> miette::Report {
    // timely prints its connection progress on stdout.
    miette!(
        code = "mars::cluster::output",
        "in a cluster, give --output FILE (stdout carries timely's connection messages)"
    )
}

/// Read a hosts file.
pub fn read_hosts(path: &Path) -> miette::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read hosts file {}", path.display()))?;
    Cluster::parse_hosts(&text)
        .map_err(|e| miette!(code = "mars::cluster::hosts", "{}: {e}", path.display()))
}

/// Processes 1..n of a local cluster, running as children, and the private folder holding
/// their hosts file and run token (removed when this is dropped, and on every way out).
pub struct LocalPeers {
    pub hosts: Vec<String>,
    pub children: Vec<std::process::Child>,
    /// The run token the children were given.
    pub token: String,
    _dir: crate::shutdown::PrivateDir,
}

impl LocalPeers {
    /// Process 0's view of the cluster.
    pub fn cluster(&self) -> Cluster {
        Cluster {
            hosts: self.hosts.clone(),
            process: 0,
            token: Some(self.token.clone()),
        }
    }

    /// Wait for every child (killing them first when `kill`); the failures, described.
    pub fn wait(&mut self, kill: bool) -> Vec<String> {
        let mut failed = Vec::new();
        for (i, child) in self.children.iter_mut().enumerate() {
            if kill {
                let _ = child.kill();
            }
            crate::shutdown::forget_child(child.id());
            match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => failed.push(format!("process {} {status}", i + 1)),
                Err(e) => failed.push(format!("process {}: {e}", i + 1)),
            }
        }
        failed
    }
}

/// Pick `n` free local ports, write them and a fresh run token to a private folder, and
/// start processes 1..n of a cluster running `plan` as children (`marsc worker`).
pub fn spawn_peers(plan: &Path, n: usize, workers: usize) -> miette::Result<LocalPeers> {
    // Ports the OS says are free now; a clash with another program in between makes a
    // process fail to listen, which is reported.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .into_diagnostic()
        .wrap_err("finding free local ports")?;
    let hosts: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| format!("127.0.0.1:{}", a.port())))
        .collect::<Result<_, _>>()
        .into_diagnostic()?;
    drop(listeners);
    let dir = crate::shutdown::PrivateDir::new("mars-cluster")
        .into_diagnostic()
        .wrap_err("creating a private temporary folder for the cluster")?;
    let token = mars_runtime::cluster::handshake::new_token().into_diagnostic()?;
    let hosts_file = dir
        .write("hosts", (hosts.join("\n") + "\n").as_bytes())
        .into_diagnostic()?;
    let secret_file = dir.write("token", token.as_bytes()).into_diagnostic()?;
    let exe = std::env::current_exe().into_diagnostic()?;
    let mut children = Vec::new();
    for process in 1..n {
        let child = std::process::Command::new(&exe)
            .arg("worker")
            .arg(plan)
            .arg("--hosts")
            .arg(&hosts_file)
            .arg("--cluster-secret")
            .arg(&secret_file)
            .arg("--process")
            .arg(process.to_string())
            .arg("--workers")
            .arg(workers.to_string())
            .arg("-q")
            .stdout(std::process::Stdio::null())
            .spawn()
            .into_diagnostic()
            .wrap_err("starting a cluster process")?;
        crate::shutdown::stop_on_exit(child.id());
        children.push(child);
    }
    Ok(LocalPeers {
        hosts,
        children,
        token,
        _dir: dir,
    })
}

/// Start processes 1..n as children (`marsc worker`), run process 0 here, then wait for them.
fn local_cluster(args: Args, n: usize) -> miette::Result<ExitCode> {
    if n == 0 {
        return Err(miette!(
            code = "mars::cluster::size",
            "--local-cluster needs at least 1 process"
        ));
    }
    let peers = spawn_peers(&args.plan, n, args.workers)?;
    let cluster = peers.cluster();
    // A child that dies makes this process stop too, even while it still waits for the
    // child to connect.
    let peers = Arc::new(std::sync::Mutex::new(peers));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let peers = Arc::clone(&peers);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(mut p) = peers.lock() {
                    for (i, c) in p.children.iter_mut().enumerate() {
                        if let Ok(Some(status)) = c.try_wait() {
                            if !status.success() {
                                eprintln!("error[mars::cluster::lost]: cluster process {} exited ({status}); the run stops", i + 1);
                                crate::shutdown::exit(2);
                            }
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let result = execute(args, Some(cluster));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watchdog.join();
    let mut peers = peers
        .lock()
        .map_err(|_| miette!("cluster bookkeeping failed"))?;
    // After an error or a cluster failure (status 2) the children are stopped, not awaited.
    let stopped = match &result {
        Err(_) => true,
        Ok(c) => *c == ExitCode::from(2),
    };
    let failed = peers.wait(stopped);
    let code = result?;
    if code == ExitCode::SUCCESS && !failed.is_empty() {
        return Err(miette!(
            code = "mars::cluster::lost",
            "cluster processes failed: {}",
            failed.join(", ")
        ));
    }
    Ok(code)
}

/// Report a cluster failure; its exit status is 2.
pub fn cluster_failed(f: &mars_runtime::cluster::health::Failure) -> ExitCode {
    use mars_runtime::cluster::handshake::{CONNECT, PLAN};
    eprintln!("error[{}]: {}", f.code, f.message);
    if f.code == CONNECT {
        eprintln!("  start every process listed in the hosts file (same plan, same marsc, same --cluster-secret), check the addresses and firewalls, or raise --connect-timeout");
    } else if f.code != PLAN {
        eprintln!("  the run stops; records written so far are whole lines: rerun with --resume to finish it");
    }
    ExitCode::from(2)
}

/// The ids already written to `path` (whole lines only); a cut-off last line is removed.
fn resume_from(path: &Path) -> miette::Result<HashSet<u64>> {
    let mut ids = HashSet::new();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => {
            return Err(e)
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot read {}", path.display()))
        }
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in bytes[..whole]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let id = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|j| j.get("id").and_then(serde_json::Value::as_u64));
        match id {
            Some(id) => {
                ids.insert(id);
            }
            None => {
                return Err(miette!(
                    code = "mars::run::resume",
                    "{} holds a line that is not a record: {}",
                    path.display(),
                    String::from_utf8_lossy(line)
                ))
            }
        }
    }
    if whole < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .into_diagnostic()?;
        f.set_len(whole as u64).into_diagnostic()?;
    }
    Ok(ids)
}

/// `--workers`, `--max-inflight` and `--local-cluster` within their limits (SPEC 7.1).
pub fn check_counts(args: &Args) -> miette::Result<()> {
    use mars_plan::limits::{MAX_INFLIGHT, MAX_INFLIGHT_MIB, MAX_PROCESSES, MAX_WORKERS};
    let bad = |flag: &str, n: usize, high: usize| {
        miette!(
            code = "mars::run::limit",
            "{flag} {n} is out of range (from 1 to {high}; SPEC 7.1)"
        )
    };
    if !(1..=MAX_WORKERS).contains(&args.workers) {
        return Err(bad("--workers", args.workers, MAX_WORKERS));
    }
    if !(1..=MAX_INFLIGHT).contains(&args.max_inflight) {
        return Err(bad("--max-inflight", args.max_inflight, MAX_INFLIGHT));
    }
    if !(1..=MAX_INFLIGHT_MIB).contains(&args.max_inflight_mib) {
        return Err(bad(
            "--max-inflight-mib",
            args.max_inflight_mib,
            MAX_INFLIGHT_MIB,
        ));
    }
    if let Some(n) = args.local_cluster {
        if !(1..=MAX_PROCESSES).contains(&n) {
            return Err(bad("--local-cluster", n, MAX_PROCESSES));
        }
    }
    Ok(())
}

/// `--verify`: the plan's recorded hashes against the files (SPEC 7.4). A plan is code: it
/// names the programs it runs; this checks that it is the plan of the source at hand.
fn verify(args: &Args, plan: &Plan) -> miette::Result<()> {
    let origin = &plan.inputs_of_plan;
    let limit = mars_plan::limits::MAX_YAML_BYTES;
    let source = folder_of(&args.plan).join(&origin.source);
    let checks = [
        (
            "source",
            Some(source),
            Some(origin.source_hash.clone()),
            super::file_io::MAX_SOURCE_BYTES,
        ),
        (
            "profile",
            args.profile.clone(),
            origin.profile_hash.clone(),
            limit,
        ),
        (
            "target",
            args.target.clone(),
            origin.target_hash.clone(),
            limit,
        ),
    ];
    for (what, path, recorded, limit) in checks {
        match (path, recorded) {
            (None, None) => {}
            (Some(path), None) => {
                return Err(miette!(
                    code = "mars::run::verify",
                    "--verify: the plan was compiled without a {what}, but --{what} {} was given",
                    path.display()
                ))
            }
            (None, Some(_)) => {
                return Err(miette!(
                    code = "mars::run::verify",
                    help = format!("give --{what} FILE"),
                    "--verify: the plan was compiled with a {what}; name it to verify it"
                ))
            }
            (Some(path), Some(recorded)) => {
                let bytes = super::file_io::read_input(&path, what, limit)?;
                let actual = super::compile::sha256(&bytes);
                if actual != recorded {
                    return Err(miette!(
                        code = "mars::run::verify",
                        help = "recompile the plan with `marsc compile`",
                        "--verify: {} is not the {what} the plan was compiled from (it records {recorded}, the file is {actual})",
                        path.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Open `--output` for writing: never the input or the plan, and locked (`flock`) so that a
/// second run writing the same file is refused instead of interleaving records. Truncated
/// after the lock is held, unless resuming.
fn open_output(args: &Args) -> miette::Result<File> {
    super::file_io::check_output(&args.output, &[args.input.as_path(), args.plan.as_path()])?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.output)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot create {}", args.output.display()))?;
    let locked = mars_runtime::files::try_lock_exclusive(&f)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot lock {}", args.output.display()))?;
    if !locked {
        return Err(miette!(
            code = "mars::run::output_locked",
            "{} is being written by another run; two runs cannot share an output",
            args.output.display()
        ));
    }
    Ok(f)
}

/// Run this process (process 0 when in a cluster) with `marsc run`'s flags.
pub fn execute(args: Args, cluster: Option<Cluster>) -> miette::Result<ExitCode> {
    execute_with(args, cluster, None)
}

/// [`execute`], admitting through an offline `window` when one is given (the offline runs of
/// `marsc serve --deployment`, SPEC 10.8).
pub fn execute_with(
    args: Args,
    cluster: Option<Cluster>,
    window: Option<Arc<mars_runtime::pool::priority::Window>>,
) -> miette::Result<ExitCode> {
    check_counts(&args)?;
    let (plan, base_dir) = load_plan(&args.plan)?;
    if args.verify {
        verify(&args, &plan)?;
    }
    let to_stdout = args.output.as_os_str() == "-";
    let locked_output = if to_stdout {
        None
    } else {
        Some(open_output(&args)?)
    };
    if let Some(c) = &cluster {
        if to_stdout {
            // timely prints its connection progress on stdout.
            return Err(miette!(
                code = "mars::cluster::output",
                "in a cluster, give --output FILE (stdout carries timely's connection messages)"
            ));
        }
        mars_runtime::cluster::report_lost_links(c.hosts.clone());
    }
    let skip = if args.resume {
        if to_stdout {
            return Err(miette!(
                code = "mars::run::resume",
                "--resume needs --output FILE"
            ));
        }
        resume_from(&args.output)?
    } else {
        HashSet::new()
    };
    let bar = progress_bar(args.quiet);
    let progress: Option<Arc<mars_runtime::run::ProgressFn>> = bar.clone().map(|bar| {
        Arc::new(move |p: &Progress| {
            let secs = p.elapsed.as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{} requests, {:.0} req/s, {} errors",
                p.done,
                p.done as f64 / secs,
                p.errors
            ));
        }) as Arc<mars_runtime::run::ProgressFn>
    });
    let stdin_input = args.input.as_os_str() == "-";
    let opts = RunOptions {
        workers: args.workers,
        max_inflight: args.max_inflight,
        max_inflight_bytes: args.max_inflight_mib << 20,
        ordered: args.ordered,
        fail_fast: args.fail_fast,
        trace: args.trace.is_some(),
        input_dir: if stdin_input {
            None
        } else {
            Some(folder_of(&args.input))
        },
        allow_files: args.allow_files.clone(),
        progress,
        cluster,
        skip: Arc::new(skip),
        connect_timeout: connect_timeout(args.connect_timeout)?,
        peer_timeout: seconds(args.peer_timeout, "--peer-timeout")?,
        files_dir: match &args.files_dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .into_diagnostic()
                    .wrap_err_with(|| format!("cannot create --files-dir {}", d.display()))?;
                Some(d.clone())
            }
            None => None,
        },
        elastic: args.elastic == Elastic::On,
        window,
    };
    let registry = mars_stdlib::registry();
    // The runtime writes whole lines in large chunks itself: no BufWriter, so that a process
    // that dies leaves only complete records behind.
    let mut output: Box<dyn Write> = match locked_output {
        None => Box::new(std::io::stdout()),
        Some(f) => {
            // Only a regular file is truncated: `-o /dev/null` or a FIFO is written as it is.
            let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
            if !args.resume && regular {
                f.set_len(0)
                    .into_diagnostic()
                    .wrap_err_with(|| format!("cannot truncate {}", args.output.display()))?;
            }
            Box::new(f)
        }
    };
    let report = if stdin_input {
        let input = BufReader::with_capacity(1 << 16, std::io::stdin());
        mars_runtime::run_plan(&plan, &base_dir, &registry, opts, input, &mut output)
    } else {
        let f = File::open(&args.input)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot open {}", args.input.display()))?;
        mars_runtime::run_plan(
            &plan,
            &base_dir,
            &registry,
            opts,
            BufReader::with_capacity(1 << 16, f),
            &mut output,
        )
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = match report {
        // A reader that went away (`marsc run … | head`) ends the run quietly, as other
        // command-line tools do; a file output never gives this error.
        Err(RunError::Output(e)) if to_stdout && e.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(ExitCode::SUCCESS)
        }
        // A cluster that did not form, or lost or stalled a peer: status 2 (SPEC 3.10).
        Err(RunError::Cluster(f)) => return Ok(cluster_failed(&f)),
        r => r.map_err(run_error)?,
    };
    output
        .flush()
        .into_diagnostic()
        .wrap_err("writing output")?;

    if let Some(path) = &args.stats_json {
        let text = serde_json::to_string_pretty(&report.stats).into_diagnostic()?;
        super::file_io::write_whole(path, (text + "\n").as_bytes())?;
    }
    if let (Some(path), Some(trace)) = (&args.trace, &report.trace) {
        let f = File::create(path)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot create {}", path.display()))?;
        let mut w = BufWriter::new(f);
        serde_json::to_writer(&mut w, trace)
            .into_diagnostic()
            .and_then(|()| w.flush().into_diagnostic())
            .wrap_err_with(|| format!("cannot write {}", path.display()))?;
    }
    if !args.quiet {
        eprint!("{}", report.stats.summary());
    }
    Ok(if report.stats.stopped_at.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
