//! NVRTC, found at run time: kernels are compiled for the GPU at hand, and CI compiles every
//! kernel for sm_90 without a GPU or a CUDA toolkit, from the `nvidia-cuda-nvrtc-cu12` wheel.
//!
//! Where libnvrtc comes from, first match wins:
//! 1. `MARS_NVRTC_LIB`: the library file, or a folder holding `libnvrtc.so.12` (the wheel's
//!    `nvidia/cuda_nvrtc/lib`);
//! 2. `$VIRTUAL_ENV/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12`;
//! 3. the system loader's path, under the names cudarc tries (`libnvrtc.so`, `libnvrtc.so.12`, …).
//!
//! The library named by 1 or 2 is opened by its path (RTLD_GLOBAL) and stays open; cudarc then
//! finds it by its soname. cudarc panics on a missing library or symbol, so the library is
//! looked for first and the calls into it run under `catch_unwind`.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::kernels::KernelFile;

/// The environment variable naming libnvrtc (a file or its folder).
pub const NVRTC_LIB_VAR: &str = "MARS_NVRTC_LIB";
const SONAME: &str = "libnvrtc.so.12";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NvrtcError {
    #[error("NVRTC is not available: {0}")]
    Unavailable(String),
    #[error("kernel file `{file}` failed to compile for {arch}:\n{log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
    #[error("kernel file `{file}` compiled, but its PTX lacks the entry `{function}`")]
    MissingEntry { file: String, function: String },
}

/// A loaded NVRTC.
#[derive(Debug, Clone, Copy)]
pub struct Nvrtc {
    _private: (),
}

/// The library a path or the virtualenv names, if any (see the module doc).
pub fn configured_library() -> Result<Option<PathBuf>, NvrtcError> {
    if let Some(v) = std::env::var_os(NVRTC_LIB_VAR) {
        let p = PathBuf::from(v);
        let file = if p.is_dir() { p.join(SONAME) } else { p };
        if !file.is_file() {
            return Err(NvrtcError::Unavailable(format!(
                "{NVRTC_LIB_VAR}={} does not name libnvrtc ({} is not a file)",
                std::env::var(NVRTC_LIB_VAR).unwrap_or_default(),
                file.display()
            )));
        }
        return Ok(Some(file));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        let lib = Path::new(&venv).join("lib");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                e.path()
                    .join("site-packages/nvidia/cuda_nvrtc/lib")
                    .join(SONAME)
            })
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        return Ok(found.pop());
    }
    Ok(None)
}

/// Opens `path` for the life of the process, so that cudarc finds it by its soname.
fn preload(path: &Path) -> Result<(), NvrtcError> {
    static OPENED: OnceLock<Result<(), String>> = OnceLock::new();
    OPENED
        .get_or_init(|| {
            let c = CString::new(path.as_os_str().to_string_lossy().as_bytes())
                .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
            // SAFETY: dlopen with a valid C string; the handle is deliberately never closed.
            let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                // SAFETY: dlerror returns a thread-local C string or null.
                let why = unsafe {
                    let e = libc::dlerror();
                    if e.is_null() {
                        "unknown error".to_string()
                    } else {
                        std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                    }
                };
                return Err(format!("cannot load {}: {why}", path.display()));
            }
            Ok(())
        })
        .clone()
        .map_err(NvrtcError::Unavailable)
}

impl Nvrtc {
    /// Finds and loads libnvrtc, or says why it cannot.
    pub fn load() -> Result<Nvrtc, NvrtcError> {
        if let Some(path) = configured_library()? {
            preload(&path)?;
        }
        // SAFETY: only tries to open the library under cudarc's candidate names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(NvrtcError::Unavailable(format!(
                "libnvrtc was not found (set {NVRTC_LIB_VAR} to the library or its folder, e.g. the \
                 `nvidia/cuda_nvrtc/lib` folder of the nvidia-cuda-nvrtc-cu12 wheel)"
            )));
        }
        match std::panic::catch_unwind(raw_version) {
            Ok(Some(_)) => Ok(Nvrtc { _private: () }),
            Ok(None) => Err(NvrtcError::Unavailable("nvrtcVersion failed".into())),
            Err(_) => Err(NvrtcError::Unavailable(
                "libnvrtc lacks a function cudarc needs (too old?)".into(),
            )),
        }
    }

    /// NVRTC's version, (major, minor).
    pub fn version(&self) -> Option<(i32, i32)> {
        std::panic::catch_unwind(raw_version).ok().flatten()
    }

    /// Compiles `file` to PTX for `arch` (`sm_90`), checking that every kernel it lists is
    /// an entry of the result.
    pub fn compile(&self, file: &KernelFile, arch: &str) -> Result<cudarc::nvrtc::Ptx, NvrtcError> {
        let opts = cudarc::nvrtc::CompileOptions {
            name: Some(file.name.to_string()),
            options: vec![
                format!("--gpu-architecture={arch}"),
                "--std=c++17".to_string(),
            ],
            ..Default::default()
        };
        let program = file.program();
        let compiled =
            std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(program, opts));
        let ptx = match compiled {
            Ok(Ok(ptx)) => ptx,
            Ok(Err(cudarc::nvrtc::CompileError::CompileError { log, .. })) => {
                return Err(NvrtcError::Compile {
                    file: file.name.to_string(),
                    arch: arch.to_string(),
                    log: log.to_string_lossy().into_owned(),
                })
            }
            Ok(Err(other)) => {
                return Err(NvrtcError::Compile {
                    file: file.name.to_string(),
                    arch: arch.to_string(),
                    log: format!("{other:?}"),
                })
            }
            Err(_) => {
                return Err(NvrtcError::Unavailable(format!(
                    "NVRTC failed while compiling {} (a missing symbol?)",
                    file.name
                )))
            }
        };
        let text = ptx.to_src();
        for f in file.functions {
            if !has_entry(&text, f) {
                return Err(NvrtcError::MissingEntry {
                    file: file.name.to_string(),
                    function: f.to_string(),
                });
            }
        }
        Ok(ptx)
    }
}

fn raw_version() -> Option<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtcVersion writes two ints through valid pointers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Whether PTX text defines the kernel `name` (`.entry name(`).
pub fn has_entry(ptx: &str, name: &str) -> bool {
    ptx.lines().any(|l| {
        l.trim_start()
            .strip_prefix(".visible .entry ")
            .or_else(|| l.trim_start().strip_prefix(".entry "))
            .is_some_and(|rest| rest.strip_prefix(name).is_some_and(|r| r.starts_with('(')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_exact_name() {
        let ptx = ".version 8.8\n.visible .entry rms_norm(\n\t.param .u64 a\n)\n";
        assert!(has_entry(ptx, "rms_norm"));
        assert!(!has_entry(ptx, "rms"));
        assert!(!has_entry(ptx, "layer_norm"));
    }
}
