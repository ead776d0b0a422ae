//! Mars's file formats, shared by the compiler and the runtime: the plan, the profile and the
//! target. Each format has one module that alone reads and writes it; loading errors name the
//! file, the line and the key.
//!
//! ```
//! let yaml = "mars_target: 1\nworkers:\n  - {name: w0, cpus: 4, memory_gb: 16}\n";
//! let target = mars_plan::Target::from_yaml(yaml, "target.yaml").unwrap();
//! assert_eq!(target.workers[0].cpus, 4.0);
//! ```

pub mod deployment;
pub mod error;
pub mod limits;
pub mod plan;
pub mod pool;
pub mod profile;
pub mod target;
pub mod types;
pub mod validate;
pub mod yaml;

pub use error::{find_key_line, find_key_path, load_yaml, LoadError};
pub use plan::*;
pub use pool::{GpuShare, ReplicaRange, WorkerBudget};
pub use profile::*;
pub use target::*;
pub use types::{DType, DataType, Dim};
