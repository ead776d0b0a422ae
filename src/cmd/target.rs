//! `marsc target detect [-o FILE] [--name W]`: write a target file (SPEC 2.2) describing this
//! machine: its cores and memory and, when a CUDA driver is present, each GPU's memory, with
//! its name, SM count and compute capability as comments (the target schema has no keys for
//! them; the planner does not use them). Without a driver the target is CPU-only and says why.

use std::path::PathBuf;
use std::process::ExitCode;

use mars_cuda::probe::GpuInfo;
use miette::{miette, IntoDiagnostic, WrapErr};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: TargetCommand,
}

#[derive(clap::Subcommand)]
pub enum TargetCommand {
    /// Describe this machine as a one-worker target: cores, memory, GPUs (through the CUDA
    /// driver when one is present).
    Detect {
        /// Write the target here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The worker's name.
        #[arg(long, default_value = "local")]
        name: String,
    },
}

/// What was found on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub cpus: usize,
    /// Total memory in bytes (the smaller of the machine's and the cgroup's limit), if known.
    pub memory_bytes: Option<u64>,
    /// The GPUs, or why there are none.
    pub gpus: Result<Vec<GpuInfo>, String>,
}

impl Machine {
    pub fn detect() -> Machine {
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: memory_bytes(),
            gpus: mars_cuda::probe::gpus(),
        }
    }
}

/// `MemTotal` of /proc/meminfo, lowered to the cgroup v2 limit (`memory.max`) where one is set.
fn memory_bytes() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (total, limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    }
}

/// Gigabytes, rounded down to a tenth (a target never promises more than there is).
fn gb_floor(bytes: u64) -> f64 {
    (bytes as f64 / f64::from(1u32 << 30) * 10.0).floor() / 10.0
}

/// The target file for `machine`, with one worker named `name`.
pub fn target_yaml(machine: &Machine, name: &str) -> String {
    let mut y = String::from("# Written by `marsc target detect`.\nmars_target: 1\nworkers:\n");
    y.push_str(&format!("  - name: {name}\n    cpus: {}\n", machine.cpus));
    match machine.memory_bytes {
        Some(b) => y.push_str(&format!("    memory_gb: {}\n", gb_floor(b))),
        None => y.push_str("    # memory unknown (no /proc/meminfo): not constrained\n"),
    }
    match &machine.gpus {
        Ok(gpus) => {
            y.push_str("    gpus:\n");
            for g in gpus {
                y.push_str(&format!(
                    "      # {}: {} SMs, compute capability {}.{}\n",
                    g.name, g.sm_count, g.compute_capability.0, g.compute_capability.1
                ));
                y.push_str(&format!(
                    "      - {{name: gpu{}, memory_gb: {}}}\n",
                    g.ordinal,
                    gb_floor(g.memory_mb << 20)
                ));
            }
        }
        Err(why) => y.push_str(&format!("    # no GPU: {}\n", why.replace('\n', " "))),
    }
    y
}

pub fn run(args: Args) -> miette::Result<ExitCode> {
    match args.command {
        TargetCommand::Detect { output, name } => {
            let machine = Machine::detect();
            let text = target_yaml(&machine, &name);
            // The file must load as every target does (names, sizes).
            mars_plan::Target::from_yaml(&text, "the detected target")
                .map_err(|e| miette!("{e}"))
                .wrap_err("`marsc target detect` produced a target it cannot read (a bug)")?;
            if let Err(why) = &machine.gpus {
                eprintln!("note: a CPU-only target: {why}");
            }
            match output {
                Some(path) => {
                    std::fs::write(&path, &text)
                        .into_diagnostic()
                        .wrap_err_with(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200(ordinal: usize) -> GpuInfo {
        GpuInfo {
            ordinal,
            name: "NVIDIA H200".into(),
            memory_mb: 143_771,
            sm_count: 132,
            compute_capability: (9, 0),
        }
    }

    #[test]
    fn a_gpu_machine_lists_each_gpu_with_its_memory_and_a_comment() {
        let m = Machine {
            cpus: 16,
            memory_bytes: Some(128 << 30),
            gpus: Ok(vec![h200(0), h200(1)]),
        };
        let y = target_yaml(&m, "w0");
        let t = mars_plan::Target::from_yaml(&y, "t.yaml").expect("loads");
        let w = &t.workers[0];
        assert_eq!((w.name.as_str(), w.cpus, w.memory_gb), ("w0", 16.0, 128.0));
        assert_eq!(w.gpus.len(), 2);
        assert_eq!(w.gpus[1].name, "gpu1");
        assert_eq!(w.gpus[0].memory_gb, 140.4);
        assert_eq!(w.gpus[0].share, 1.0);
        assert!(
            y.contains("# NVIDIA H200: 132 SMs, compute capability 9.0"),
            "{y}"
        );
    }

    #[test]
    fn without_a_driver_the_target_is_cpu_only_and_says_why() {
        let m = Machine {
            cpus: 2,
            memory_bytes: Some(24_683_584 * 1024),
            gpus: Err("no CUDA driver was found".into()),
        };
        let y = target_yaml(&m, "local");
        let t = mars_plan::Target::from_yaml(&y, "t.yaml").expect("loads");
        assert!(t.workers[0].gpus.is_empty());
        assert_eq!(t.workers[0].memory_gb, 23.5);
        assert!(y.contains("# no GPU: no CUDA driver was found"), "{y}");
    }

    #[test]
    fn unknown_memory_is_left_unconstrained() {
        let m = Machine {
            cpus: 1,
            memory_bytes: None,
            gpus: Err("none".into()),
        };
        let t = mars_plan::Target::from_yaml(&target_yaml(&m, "x"), "t.yaml").expect("loads");
        assert_eq!(t.workers[0].memory_gb, 0.0);
    }
}
