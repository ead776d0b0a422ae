//! The device-memory budget of a node's replicas: the weights are on the GPU once, each
//! replica has its activation scratch, and what is left of the free memory (less a margin)
//! becomes KV cache — that is where the continuous-batching scheduler's `kv_tokens` bound
//! comes from on a GPU (SPEC 6.3, 9.4).

/// Fraction of the free memory the KV caches may take; the rest stays for cuBLAS workspaces,
/// the driver and fragmentation.
pub const KV_FRACTION: f64 = 0.9;

/// What one replica's memory looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvBudget {
    /// Free device memory after the shared weights are uploaded, in bytes.
    pub free_bytes: u64,
    /// Replicas (streams) sharing the GPU.
    pub replicas: u32,
    /// Activation scratch of one replica, in bytes.
    pub scratch_bytes: u64,
    /// K and V of one token over every layer, in bytes.
    pub kv_bytes_per_token: u64,
    /// Tokens per cache block.
    pub block_size: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "the GPU has {free_mb} MB free after the weights, but {replicas} replica(s) need \
         {need_mb} MB of scratch and at least one KV block each"
    )]
    TooSmall {
        free_mb: u64,
        replicas: u32,
        need_mb: u64,
    },
    #[error("a KV budget needs at least one replica, a block size and a per-token size")]
    Degenerate,
}

/// K and V (f16) of one token over `n_layers` layers.
pub fn kv_bytes_per_token(n_layers: usize, n_kv_heads: usize, head_dim: usize) -> u64 {
    2 * 2 * (n_layers * n_kv_heads * head_dim) as u64
}

impl KvBudget {
    /// Blocks of KV cache per replica.
    pub fn blocks_per_replica(&self) -> Result<u32, BudgetError> {
        if self.replicas == 0 || self.block_size == 0 || self.kv_bytes_per_token == 0 {
            return Err(BudgetError::Degenerate);
        }
        let usable = (self.free_bytes as f64 * KV_FRACTION) as u64;
        let scratch = self.scratch_bytes.saturating_mul(u64::from(self.replicas));
        let block_bytes = self.kv_bytes_per_token * u64::from(self.block_size);
        let per_replica = usable.saturating_sub(scratch) / u64::from(self.replicas);
        let blocks = per_replica / block_bytes;
        if blocks == 0 {
            return Err(BudgetError::TooSmall {
                free_mb: self.free_bytes >> 20,
                replicas: self.replicas,
                need_mb: (scratch + block_bytes * u64::from(self.replicas)) >> 20,
            });
        }
        Ok(blocks.min(u64::from(u32::MAX)) as u32)
    }

    /// The `kv_tokens` bound of one replica: its blocks times the block size, never more
    /// than `configured` when the model sets one (`kv_tokens > 0`).
    pub fn kv_tokens(&self, configured: Option<u64>) -> Result<u64, BudgetError> {
        let derived = u64::from(self.blocks_per_replica()?) * u64::from(self.block_size);
        Ok(match configured {
            Some(k) if k > 0 => derived.min(k),
            _ => derived,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_on(free_gb: u64, replicas: u32) -> KvBudget {
        KvBudget {
            free_bytes: free_gb << 30,
            replicas,
            scratch_bytes: 64 << 20,
            // SmolLM2-135M: 30 layers, 3 KV heads of 64.
            kv_bytes_per_token: kv_bytes_per_token(30, 3, 64),
            block_size: 16,
        }
    }

    #[test]
    fn per_token_bytes_count_k_and_v_in_f16() {
        assert_eq!(kv_bytes_per_token(30, 3, 64), 2 * 2 * 30 * 3 * 64);
    }

    #[test]
    fn kv_tokens_are_whole_blocks_of_the_free_memory_left_after_scratch() {
        let b = smollm2_on(100, 2);
        let usable = ((100u64 << 30) as f64 * KV_FRACTION) as u64 - 2 * (64 << 20);
        let block = 23_040 * 16;
        let expect = usable / 2 / block * 16;
        assert_eq!(b.kv_tokens(None), Ok(expect));
        assert_eq!(expect % 16, 0);
        // Twice the replicas: each gets half of what is left after twice the scratch.
        let four = smollm2_on(100, 4).kv_tokens(None).expect("fits");
        let usable4 = ((100u64 << 30) as f64 * KV_FRACTION) as u64 - 4 * (64 << 20);
        assert_eq!(four, usable4 / 4 / block * 16);
        assert!(four < expect / 2);
    }

    #[test]
    fn a_configured_bound_only_lowers_the_derived_one() {
        let b = smollm2_on(1, 1);
        let derived = b.kv_tokens(None).expect("fits");
        assert_eq!(b.kv_tokens(Some(4096)), Ok(4096.min(derived)));
        assert_eq!(b.kv_tokens(Some(0)), Ok(derived));
        assert_eq!(b.kv_tokens(Some(u64::MAX)), Ok(derived));
    }

    #[test]
    fn too_little_memory_is_an_error_that_says_how_much() {
        let b = KvBudget {
            free_bytes: 100 << 20,
            replicas: 2,
            scratch_bytes: 64 << 20,
            kv_bytes_per_token: 1 << 20,
            block_size: 16,
        };
        let e = b.kv_tokens(None).expect_err("does not fit");
        assert!(e.to_string().contains("2 replica(s)"), "{e}");
        let zero = KvBudget { replicas: 0, ..b };
        assert_eq!(zero.kv_tokens(None), Err(BudgetError::Degenerate));
    }
}
