//! The GPUs of this machine, read through the CUDA driver API (libcuda, loaded at run time).
//! No driver is an answer ("no CUDA driver was found"), never a panic: cudarc panics on a
//! missing library or symbol, so the library is looked for first and the calls run under
//! `catch_unwind`.

use cudarc::driver::{sys::CUdevice_attribute, CudaContext};

/// One GPU the driver reports.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub memory_mb: u64,
    pub sm_count: u32,
    pub compute_capability: (i32, i32),
}

impl GpuInfo {
    /// The NVRTC architecture of this GPU (`sm_90`).
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

/// Whether libcuda can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Runs `f` against the driver, turning a missing driver or symbol into an error.
pub fn with_driver<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    if !driver_present() {
        return Err("no CUDA driver was found (libcuda could not be loaded)".into());
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err("the CUDA driver lacks a function cudarc needs (driver too old?)".into()),
    }
}

/// The GPUs of this machine, or why there are none.
pub fn gpus() -> Result<Vec<GpuInfo>, String> {
    let found: Vec<GpuInfo> = with_driver(|| {
        let count =
            CudaContext::device_count().map_err(|e| format!("the CUDA driver failed: {e:?}"))?;
        (0..count.max(0) as usize)
            .map(|ordinal| {
                let err = |e: cudarc::driver::DriverError| format!("GPU {ordinal}: {e:?}");
                let ctx = CudaContext::new(ordinal)
                    .map_err(|e| format!("cannot open GPU {ordinal}: {e:?}"))?;
                Ok(GpuInfo {
                    ordinal,
                    name: ctx.name().map_err(err)?,
                    memory_mb: ctx.total_mem().map_err(err)? as u64 / (1 << 20),
                    sm_count: ctx
                        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                        .map_err(err)?
                        .max(0) as u32,
                    compute_capability: ctx.compute_capability().map_err(err)?,
                })
            })
            .collect()
    })?;
    if found.is_empty() {
        return Err("the CUDA driver reports no GPU".into());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #[test]
    fn probing_answers_without_panicking() {
        match super::gpus() {
            Ok(gpus) => assert!(gpus.iter().all(|g| !g.name.is_empty() && g.sm_count > 0)),
            Err(why) => assert!(!why.is_empty()),
        }
    }

    #[test]
    fn the_arch_names_the_compute_capability() {
        let g = super::GpuInfo {
            ordinal: 0,
            name: "NVIDIA H200".into(),
            memory_mb: 143_771,
            sm_count: 132,
            compute_capability: (9, 0),
        };
        assert_eq!(g.arch(), "sm_90");
    }
}
