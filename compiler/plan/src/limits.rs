//! The stated limits of Mars (SPEC chapter 7): the largest counts and durations that the
//! checker accepts in source, the planner writes, the plan loader reads and `marsc run`
//! takes on its command line. One table, so that every stage refuses the same values and a
//! plan that loads never asks the runtime for more than it can give.

/// Replicas of one node (`@replicas(N)`, a plan node's `replicas`).
pub const MAX_REPLICAS: u32 = 256;

/// The largest batch (`@batch(max = N)`, a plan node's `batch.max`).
pub const MAX_BATCH: u32 = 65_536;

/// The longest batch wait (`@batch(wait = D)`, a plan node's `batch.wait_ms`), in ms: 60 s.
pub const MAX_BATCH_WAIT_MS: f64 = 60_000.0;

/// The longest duration literal anywhere in source (static parameters, SLOs), in ms: 24 h.
pub const MAX_DURATION_MS: f64 = 86_400_000.0;

/// The longest exec timeout a plan may give (`timeout_ms`), in ms: 24 h.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Nodes of one pipeline (and of one plan).
pub const MAX_NODES: usize = 10_000;

/// Timely worker threads per process (`--workers`).
pub const MAX_WORKERS: usize = 256;

/// Processes of a cluster (a hosts file's lines, `--local-cluster`, a plan's `workers`).
pub const MAX_PROCESSES: usize = 1_024;

/// Requests in flight (`--max-inflight`).
pub const MAX_INFLIGHT: usize = 1_000_000;

/// Replica threads of one process: the sum of `replicas` over the nodes a worker runs that
/// are not inline. The planner gives a node at most `min(64, MAX_REPLICA_THREADS / nodes)`
/// replicas, so a plan it writes stays within this.
pub const MAX_REPLICA_THREADS: usize = 16_384;

/// MiB of request values in flight (`--max-inflight-mib`).
pub const MAX_INFLIGHT_MIB: usize = 65_536;

/// Type nesting in a plan's type strings (`List<List<…>>`), as in source (`MAX_NESTING`).
pub const MAX_TYPE_DEPTH: usize = 100;

/// Nesting of YAML collections in a plan, profile or target (checked before parsing).
pub const MAX_YAML_DEPTH: usize = 64;

/// The largest plan, profile or target file, in bytes: 64 MiB.
pub const MAX_YAML_BYTES: u64 = 64 << 20;

/// A value of `key` that is out of its range, as the message of a load error.
pub fn out_of_range(
    value: impl std::fmt::Display,
    low: impl std::fmt::Display,
    high: impl std::fmt::Display,
) -> String {
    format!("value {value} is out of range (from {low} to {high}; SPEC 7.1)")
}
