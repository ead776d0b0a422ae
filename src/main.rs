//! `marsc`: the Mars command line. Thin: it parses arguments and calls one function per
//! command in `cmd/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod shutdown;

/// mimalloc rather than glibc's malloc: the dataflow allocates on one thread and frees on
/// another (records, batches), and glibc's arena lock made that a third of the hot path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mars: compile pipelines of ML models and functions into planned, batched, pipelined dataflows.
///
/// Try it: `marsc demo` compiles and runs a built-in translation pipeline.
///
/// A typical session:
///   marsc check app.mars                       # parse and type-check
///   marsc profile app.mars --target t.yaml -o app.profile.yaml
///   marsc compile app.mars --profile app.profile.yaml --target t.yaml -o app.plan.yaml --explain
///   marsc run app.plan.yaml --input requests.jsonl --output results.jsonl
#[derive(Parser)]
#[command(name = "marsc", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the built-in translator pipeline end to end (compile, explain, run); no setup.
    Demo(cmd::demo::Args),
    /// Parse and type-check .mars files; exit 1 on errors.
    Check(cmd::check::Args),
    /// Rewrite .mars files in canonical layout (comments kept); `--check` only reports.
    Fmt(cmd::fmt::Args),
    /// Print a pipeline's DAG as Graphviz DOT or JSON.
    Graph(cmd::graph::Args),
    /// Plan a pipeline from profiles and a target: devices, replicas, batching.
    Compile(cmd::compile::Args),
    /// Work with plan files (`marsc plan diff A B`).
    Plan(cmd::plan::Args),
    /// Measure every node kind of a pipeline on every device the target offers.
    Profile(cmd::profile::Args),
    /// Run a plan over a JSONL file of requests.
    Run(cmd::run::Args),
    /// Work with target files (`marsc target detect` describes this machine).
    Target(cmd::target::Args),
    /// Serve plans over HTTP and gRPC (KServe v2, OpenAI-compatible, plain JSON).
    Serve(cmd::serve::Args),
    /// Start one process of a multi-process cluster running a plan.
    Worker(cmd::worker::Args),
    /// Write deployment manifests for plans (`marsc deploy k8s PLAN…`).
    Deploy(cmd::deploy::Args),
    /// Benchmarks of whole pipelines and of the runtime.
    Bench(cmd::bench::Args),
    /// Make model weight files (`marsc weights init`).
    Weights(cmd::weights::Args),
    /// Train the tiny number-phrase translator used by the demo pipelines.
    TrainDemo(cmd::train_demo::Args),
    /// The model store: `marsc models list | pull NAME | path NAME`.
    Models(cmd::models::Args),
}

fn main() -> ExitCode {
    // First, before any thread starts: every thread inherits the blocked signals.
    shutdown::install();
    mars_stdlib::models::fix_thread_count();
    let cli = Cli::parse();
    // A server logs one access line per request unless MARS_LOG says otherwise.
    let filter = match (&cli.command, std::env::var_os("MARS_LOG")) {
        (Command::Serve(_), None) => tracing_subscriber::EnvFilter::new("info"),
        _ => tracing_subscriber::EnvFilter::from_env("MARS_LOG"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Fmt(a) => cmd::fmt::run(a),
        Command::Graph(a) => cmd::graph::run(a),
        Command::Compile(a) => cmd::compile::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Profile(a) => cmd::profile::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Target(a) => cmd::target::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Worker(a) => cmd::worker::run(a),
        Command::Deploy(a) => cmd::deploy::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Weights(a) => cmd::weights::run(a),
        Command::TrainDemo(a) => cmd::train_demo::run(a),
        Command::Models(a) => cmd::models::run(a),
    };
    // Every way out kills leftover exec programs and removes private temporary folders.
    shutdown::cleanup();
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::FAILURE
        }
    }
}
