//! The Mars runtime: a plan lowered to a timely dataflow, with batching, replicas, flow
//! control and executors. It never reads `.mars` source and never links the front end.

pub mod batching;
pub mod cluster;
pub mod codec;
pub mod continuous;
pub mod dataflow;
pub mod exec;
pub mod files;
pub mod gpu;
pub mod node;
pub mod npy;
pub mod pool;
pub mod profiler;
pub mod replicas;
pub mod run;
pub mod scenarios;
pub mod self_cost;
pub mod stats;
pub mod trace;
pub mod value;
pub mod watch;

pub use node::{Generate, Item, Node, NodeContext, NodeFactory, Outputs, Registry, SeqId, Step};
pub use run::{run_plan, RunError, RunOptions, RunReport};
pub use stats::RunStats;
pub use value::{BoxData, ImageData, NodeError, TensorData, Value};
