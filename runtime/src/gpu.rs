//! The GPUs this process can use, found through the CUDA driver (cudarc, loaded at run time:
//! the `cuda` feature builds without a CUDA toolkit). A build without the feature, or a machine
//! without a driver, has no GPUs, and a plan that places a node on one is refused with a message
//! saying why, never a panic.
//!
//! Model nodes run on candle's CPU backend whatever their placement: this runtime has no CUDA
//! kernels yet. A node placed on a GPU that exists runs on the CPU and the run says so.

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
    use cudarc::driver::CudaContext;

    pub fn probe() -> Result<Vec<GpuInfo>, String> {
        // cudarc panics on the first call into a library or symbol that is missing: look first,
        // and keep the panic from escaping if a symbol is.
        // SAFETY: only checks whether the driver library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver was found (libcuda could not be loaded)".into());
        }
        let found = std::panic::catch_unwind(|| -> Result<Vec<GpuInfo>, String> {
            let count = CudaContext::device_count()
                .map_err(|e| format!("the CUDA driver failed: {e:?}"))?;
            (0..count.max(0) as usize)
                .map(|ordinal| {
                    let ctx = CudaContext::new(ordinal)
                        .map_err(|e| format!("cannot open GPU {ordinal}: {e:?}"))?;
                    Ok(GpuInfo {
                        ordinal,
                        name: ctx.name().map_err(|e| format!("GPU {ordinal}: {e:?}"))?,
                        memory_mb: ctx
                            .total_mem()
                            .map_err(|e| format!("GPU {ordinal}: {e:?}"))?
                            as u64
                            / (1 << 20),
                    })
                })
                .collect()
        });
        match found {
            Ok(Ok(gpus)) if gpus.is_empty() => Err("the CUDA driver reports no GPU".into()),
            Ok(r) => r,
            Err(_) => Err("the CUDA driver lacks a function cudarc needs (driver too old?)".into()),
        }
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
