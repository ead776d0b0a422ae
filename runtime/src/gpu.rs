//! The GPUs this process can use, found through the CUDA driver (cudarc, loaded at run time:
//! the `cuda` feature builds without a CUDA toolkit). A build without the feature, or a machine
//! without a driver, has no GPUs, and a plan that places a node on one is refused with a message
//! saying why, never a panic.
//!
//! Model nodes run on candle's CPU backend whatever their placement: the CUDA executor
//! (`mars-cuda`: NVRTC kernels, cuBLAS, paged KV cache) exists but is not yet wired into the
//! model nodes, and has never run on a GPU (SPEC 9). A node placed on a GPU that exists runs on
//! the CPU and the run says so. The probing itself is `mars_cuda::probe`.

/// One GPU the driver reports.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub memory_mb: u64,
}

/// The GPUs of this machine, or why there are none.
pub fn probe() -> Result<Vec<GpuInfo>, String> {
    imp::probe()
}

#[cfg(not(feature = "cuda"))]
mod imp {
    pub fn probe() -> Result<Vec<super::GpuInfo>, String> {
        Err("this marsc was built without the `cuda` feature (cargo build --release --features cuda)".into())
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::GpuInfo;

    pub fn probe() -> Result<Vec<GpuInfo>, String> {
        Ok(mars_cuda::probe::gpus()?
            .into_iter()
            .map(|g| GpuInfo {
                ordinal: g.ordinal,
                name: g.name,
                memory_mb: g.memory_mb,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn probing_answers_without_panicking() {
        // Here: no feature, or no driver, or real GPUs; in every case an answer.
        match super::probe() {
            Ok(gpus) => assert!(gpus.iter().all(|g| !g.name.is_empty())),
            Err(why) => assert!(!why.is_empty()),
        }
    }
}
