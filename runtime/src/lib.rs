//! The Mars runtime: a plan lowered to a timely dataflow, with batching, replicas, flow
//! control and executors. It never reads `.mars` source and never links the front end.

pub mod codec;
pub mod exec;
pub mod node;
pub mod profiler;
pub mod value;

pub use node::{Item, Node, NodeContext, NodeFactory, Outputs, Registry};
pub use value::{BoxData, ImageData, NodeError, TensorData, Value};
