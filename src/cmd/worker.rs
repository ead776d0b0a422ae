//! `marsc worker PLAN --hosts hosts.txt --process I`: one process of a cluster running a plan
//! (see `mars_runtime::cluster`). Process 0 reads `--input` and writes `--output` exactly like
//! `marsc run`; the other processes run their nodes and exit when the run is over.

use std::process::ExitCode;

use miette::miette;

use mars_runtime::cluster::{self, Cluster};
use mars_runtime::run::RunOptions;

#[derive(clap::Args)]
#[group(id = "worker_args")]
pub struct Args {
    #[command(flatten)]
    pub run: super::run::Args,
    /// This process's index into the hosts file (0 reads input and writes output).
    #[arg(long)]
    pub process: usize,
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    let Some(hosts_path) = args.run.hosts.clone() else {
        return Err(miette!(
            code = "mars::cluster::hosts",
            "marsc worker needs --hosts FILE"
        ));
    };
    let hosts = super::run::read_hosts(&hosts_path)?;
    if args.process >= hosts.len() {
        return Err(miette!(
            code = "mars::cluster::process",
            "--process {} but {} lists {} processes (0..{})",
            args.process,
            hosts_path.display(),
            hosts.len(),
            hosts.len()
        ));
    }
    let cluster = Cluster {
        hosts: hosts.clone(),
        process: args.process,
        token: super::run::read_secret(args.run.cluster_secret.as_deref())?,
    };
    if args.process == 0 {
        return super::run::execute(args.run, Some(cluster));
    }
    let (plan, base_dir) = super::run::load_plan(&args.run.plan)?;
    cluster::report_lost_links(hosts);
    let opts = RunOptions {
        workers: args.run.workers,
        cluster: Some(cluster),
        connect_timeout: super::run::connect_timeout(args.run.connect_timeout)?,
        peer_timeout: super::run::seconds(args.run.peer_timeout, "--peer-timeout")?,
        elastic: args.run.elastic == super::run::Elastic::On,
        ..RunOptions::default()
    };
    match mars_runtime::run::run_peer(&plan, &base_dir, &mars_stdlib::registry(), opts) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A cluster that did not form, or lost or stalled a peer: status 2 (SPEC 3.10).
        Err(mars_runtime::RunError::Cluster(f)) => Ok(super::run::cluster_failed(&f)),
        Err(e) => Err(miette!(code = "mars::cluster::run", "{e}")),
    }
}
