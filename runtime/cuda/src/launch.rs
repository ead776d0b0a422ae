//! Launch shapes of the kernels, matching the "Launch:" line of each kernel file's header.
//! Pure arithmetic, checked against the hardware limits before any launch.

/// Threads per block of the row-wise kernels (norms, softmax, sampling, embeddings, KV writes).
pub const ROW_THREADS: u32 = 256;
/// Threads per block of the attention kernels (`ATTN_THREADS` in attention.cu).
pub const ATTENTION_THREADS: u32 = 128;
/// The largest head size the attention kernels take (`MAX_HEAD_DIM` in attention.cu).
pub const MAX_HEAD_DIM: u32 = 256;
/// Threads per block of the RoPE kernel.
pub const ROPE_THREADS: u32 = 64;
/// Threads per block of the elementwise kernels.
pub const ELEMENTWISE_THREADS: u32 = 256;
/// Output rows per block of the quantized GEMV (`GEMV_WARPS` in gemv_quant.cu).
pub const GEMV_ROWS_PER_BLOCK: u32 = 8;

/// CUDA's limits on grid sizes.
const MAX_GRID_X: u64 = (1 << 31) - 1;
const MAX_GRID_YZ: u64 = 65_535;

/// Grid and block of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a launch of {what} needs a grid of {x} × {y} blocks, beyond CUDA's limits")]
pub struct LaunchError {
    pub what: &'static str,
    pub x: u64,
    pub y: u64,
}

fn grid(what: &'static str, x: u64, y: u64, block: u32) -> Result<Launch, LaunchError> {
    if x == 0 || y == 0 || x > MAX_GRID_X || y > MAX_GRID_YZ {
        return Err(LaunchError { what, x, y });
    }
    Ok(Launch {
        grid: (x as u32, y as u32, 1),
        block: (block, 1, 1),
    })
}

impl Launch {
    /// One block per row.
    pub fn rows(what: &'static str, rows: usize) -> Result<Launch, LaunchError> {
        grid(what, rows as u64, 1, ROW_THREADS)
    }

    /// One thread per element.
    pub fn elementwise(what: &'static str, n: usize) -> Result<Launch, LaunchError> {
        grid(
            what,
            (n as u64).div_ceil(u64::from(ELEMENTWISE_THREADS)),
            1,
            ELEMENTWISE_THREADS,
        )
    }

    /// One block per (token or sequence, query head).
    pub fn attention(what: &'static str, rows: usize, heads: usize) -> Result<Launch, LaunchError> {
        grid(what, rows as u64, heads as u64, ATTENTION_THREADS)
    }

    /// One block per (token, head) for RoPE.
    pub fn rope(tokens: usize, heads: usize) -> Result<Launch, LaunchError> {
        grid("rope", tokens as u64, heads as u64, ROPE_THREADS)
    }

    /// One warp per (output, row) of a quantized GEMV.
    pub fn gemv(what: &'static str, outputs: usize, rows: usize) -> Result<Launch, LaunchError> {
        grid(
            what,
            (outputs as u64).div_ceil(u64::from(GEMV_ROWS_PER_BLOCK)),
            rows as u64,
            GEMV_ROWS_PER_BLOCK * 32,
        )
    }

    pub fn config(&self) -> cudarc::driver::LaunchConfig {
        cudarc::driver::LaunchConfig {
            grid_dim: self.grid,
            block_dim: self.block,
            shared_mem_bytes: 0,
        }
    }

    /// Threads launched in all.
    pub fn threads(&self) -> u64 {
        let (gx, gy, gz) = self.grid;
        let (bx, by, bz) = self.block;
        u64::from(gx)
            * u64::from(gy)
            * u64::from(gz)
            * u64::from(bx)
            * u64::from(by)
            * u64::from(bz)
    }
}

/// `n` as the u32 a kernel takes, or an error naming it.
pub fn as_u32(what: &'static str, n: usize) -> Result<u32, LaunchError> {
    u32::try_from(n).map_err(|_| LaunchError {
        what,
        x: n as u64,
        y: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_blocks_are_whole_warps_within_the_hardware_limit() {
        for b in [
            ROW_THREADS,
            ATTENTION_THREADS,
            ELEMENTWISE_THREADS,
            GEMV_ROWS_PER_BLOCK * 32,
        ] {
            assert_eq!(b % 32, 0);
            assert!(b <= 1024);
        }
        // attention.cu gives each thread MAX_HEAD_DIM / ATTN_THREADS outputs.
        assert_eq!(MAX_HEAD_DIM % ATTENTION_THREADS, 0);
        // sampling.cu's argmax reduces by halving: a power of two.
        assert!(ROW_THREADS.is_power_of_two());
    }

    #[test]
    fn elementwise_grids_cover_every_element_once() {
        for n in [1usize, 255, 256, 257, 1 << 20] {
            let l = Launch::elementwise("x", n).expect("fits");
            assert!(l.threads() >= n as u64);
            assert!(l.threads() - (n as u64) < u64::from(ELEMENTWISE_THREADS));
        }
    }

    #[test]
    fn gemv_grids_give_each_output_row_one_warp() {
        let l = Launch::gemv("gemv", 4097, 3).expect("fits");
        assert_eq!(l.grid, (513, 3, 1));
        assert_eq!(l.block, (256, 1, 1));
        assert!(u64::from(l.grid.0) * u64::from(GEMV_ROWS_PER_BLOCK) >= 4097);
    }

    #[test]
    fn attention_grids_are_tokens_by_heads() {
        let l = Launch::attention("attention", 7, 9).expect("fits");
        assert_eq!((l.grid, l.block), ((7, 9, 1), (128, 1, 1)));
    }

    #[test]
    fn empty_and_oversized_grids_are_refused() {
        assert!(Launch::rows("norm", 0).is_err());
        assert!(Launch::attention("attention", 1, 70_000).is_err());
        assert!(Launch::gemv("gemv", 8, 65_536).is_err());
        assert!(as_u32("tokens", 1 << 33).is_err());
        assert_eq!(as_u32("tokens", 5), Ok(5));
    }
}
