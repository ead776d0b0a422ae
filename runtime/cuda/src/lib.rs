//! Mars's CUDA executors, on cudarc with the CUDA libraries loaded at run time: this crate
//! builds without a CUDA toolkit, and everything but [`executor`] runs without a GPU.
//!
//! - [`kernels`]: the CUDA sources (`kernels/*.cu`), compiled at run time by [`nvrtc`].
//! - [`probe`]: the GPUs of this machine through the driver API.
//! - [`model`], [`quant`]: the decoder the executor runs and its weights' GPU layouts.
//! - [`paged_kv`], [`batch`], [`budget`], [`launch`]: the host-side logic of a step — KV
//!   blocks, step inputs, the `kv_tokens` bound from free memory, launch shapes.
//! - [`executor`]: weights shared by replicas, one CUDA stream per replica, cuBLAS matmuls.
//!
//! ```
//! use mars_cuda::kernels::KERNEL_FILES;
//! // Every kernel file names the kernels it defines; NVRTC compiles them at run time.
//! assert!(KERNEL_FILES.iter().any(|f| f.functions.contains(&"paged_attention_decode")));
//! ```

pub mod batch;
pub mod budget;
pub mod executor;
pub mod kernels;
pub mod launch;
pub mod model;
pub mod nvrtc;
pub mod paged_kv;
pub mod probe;
pub mod quant;
