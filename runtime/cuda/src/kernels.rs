//! The CUDA kernel sources (`runtime/cuda/kernels/*.cu`), embedded in the binary and compiled
//! at run time with NVRTC for the GPU at hand. Each file's header documents its kernels'
//! layout contracts; every file is compiled after `prelude.cuh`.

/// One kernel source file and the `extern "C" __global__` functions it defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFile {
    /// The file name under `runtime/cuda/kernels/`, also the NVRTC program name.
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

/// Types and block reductions shared by every kernel file.
pub const PRELUDE: &str = include_str!("../kernels/prelude.cuh");

macro_rules! kernel_file {
    ($name:literal, [$($f:literal),* $(,)?]) => {
        KernelFile {
            name: $name,
            source: include_str!(concat!("../kernels/", $name)),
            functions: &[$($f),*],
        }
    };
}

pub const EMBEDDING: KernelFile = kernel_file!(
    "embedding.cu",
    ["embedding_gather", "embedding_add_positions"]
);
pub const NORM: KernelFile = kernel_file!("norm.cu", ["rms_norm", "layer_norm"]);
pub const ROPE: KernelFile = kernel_file!("rope.cu", ["rope"]);
pub const ACTIVATION: KernelFile = kernel_file!(
    "activation.cu",
    ["silu_gate", "gelu_tanh_gate", "gelu_tanh"]
);
pub const ELEMENTWISE: KernelFile =
    kernel_file!("elementwise.cu", ["residual_add", "add_bias", "cast_f16"]);
pub const SOFTMAX: KernelFile = kernel_file!("softmax.cu", ["softmax_rows"]);
pub const ATTENTION: KernelFile = kernel_file!(
    "attention.cu",
    [
        "kv_cache_write",
        "attention_prefill",
        "paged_attention_decode"
    ]
);
pub const SAMPLING: KernelFile = kernel_file!("sampling.cu", ["argmax_rows", "top_p_sample"]);
pub const GEMV_QUANT: KernelFile = kernel_file!("gemv_quant.cu", ["gemv_int8", "gemv_int4"]);

/// Every kernel file, in a fixed order.
pub const KERNEL_FILES: &[KernelFile] = &[
    EMBEDDING,
    NORM,
    ROPE,
    ACTIVATION,
    ELEMENTWISE,
    SOFTMAX,
    ATTENTION,
    SAMPLING,
    GEMV_QUANT,
];

impl KernelFile {
    /// The program NVRTC compiles: the prelude, then the file, with a `#line` marker so that
    /// compile errors name the file and its own line numbers.
    pub fn program(&self) -> String {
        format!("{PRELUDE}\n#line 1 \"{}\"\n{}", self.name, self.source)
    }

    /// The kernel functions this file's source defines (`extern "C" __global__ void NAME(`),
    /// read from the source text; `functions` must list exactly these.
    pub fn defined_functions(&self) -> Vec<&'static str> {
        const MARK: &str = "extern \"C\" __global__ void ";
        let mut found = Vec::new();
        let mut rest = self.source;
        while let Some(at) = rest.find(MARK) {
            rest = &rest[at + MARK.len()..];
            let end = rest.find('(').unwrap_or(rest.len());
            found.push(rest[..end].trim());
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_lists_exactly_the_kernels_its_source_defines() {
        for file in KERNEL_FILES {
            assert_eq!(file.defined_functions(), file.functions, "{}", file.name);
        }
    }

    #[test]
    fn every_kernel_file_documents_its_layout_in_a_header() {
        for file in KERNEL_FILES {
            assert!(
                file.source.starts_with(&format!("// {} — ", file.name)),
                "{} does not open with its header",
                file.name
            );
            for f in file.functions {
                let header: String = file
                    .source
                    .lines()
                    .take_while(|l| l.starts_with("//") || l.is_empty())
                    .collect();
                assert!(
                    header.contains(f),
                    "{}: `{f}` is not in the header",
                    file.name
                );
            }
        }
    }

    #[test]
    fn kernel_names_are_unique_across_files() {
        let mut all: Vec<&str> = KERNEL_FILES
            .iter()
            .flat_map(|f| f.functions.iter().copied())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn a_program_numbers_lines_from_its_own_file() {
        let p = ROPE.program();
        assert!(p.starts_with(PRELUDE));
        assert!(p.contains("#line 1 \"rope.cu\"\n// rope.cu"));
    }
}
