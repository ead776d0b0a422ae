//! The paged KV cache's bookkeeping (host side): the cache is `n_blocks` blocks of
//! `block_size` token slots per layer; a sequence holds a list of blocks (its block table) and
//! grows one block at a time, so sequences of any length share one pool without
//! fragmentation. Slot `block * block_size + offset` is the layout attention.cu reads.

/// A sequence's blocks and its length in tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqBlocks {
    blocks: Vec<u32>,
    len: u32,
}

/// Not enough free blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the KV cache is full: {needed} more block(s) needed, {free} free")]
pub struct KvFull {
    pub needed: u32,
    pub free: u32,
}

/// The free list of one replica's cache.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size: u32,
    n_blocks: u32,
    /// Free block ids; the lowest is handed out first (a stack kept in descending order).
    free: Vec<u32>,
}

impl SeqBlocks {
    pub fn len(&self) -> u32 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }
    /// The cache slot of position `pos` (which must be below the reserved capacity).
    pub fn slot(&self, pos: u32, block_size: u32) -> u32 {
        self.blocks[(pos / block_size) as usize] * block_size + pos % block_size
    }
}

impl BlockAllocator {
    pub fn new(n_blocks: u32, block_size: u32) -> BlockAllocator {
        assert!(block_size > 0, "a block holds at least one token");
        BlockAllocator {
            block_size,
            n_blocks,
            free: (0..n_blocks).rev().collect(),
        }
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    pub fn n_blocks(&self) -> u32 {
        self.n_blocks
    }
    pub fn free_blocks(&self) -> u32 {
        self.free.len() as u32
    }
    /// Tokens the cache holds in all.
    pub fn capacity_tokens(&self) -> u64 {
        u64::from(self.n_blocks) * u64::from(self.block_size)
    }

    /// Blocks needed to hold `tokens`.
    pub fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.block_size)
    }

    /// Grows `seq` by `extra` tokens, taking blocks as needed; on failure nothing changes.
    /// Returns the slots of the new positions, in order.
    pub fn append(&mut self, seq: &mut SeqBlocks, extra: u32) -> Result<Vec<u32>, KvFull> {
        let new_len = seq.len.checked_add(extra).ok_or(KvFull {
            needed: u32::MAX,
            free: self.free_blocks(),
        })?;
        let needed = self
            .blocks_for(new_len)
            .saturating_sub(seq.blocks.len() as u32);
        if needed > self.free_blocks() {
            return Err(KvFull {
                needed,
                free: self.free_blocks(),
            });
        }
        for _ in 0..needed {
            seq.blocks.push(self.free.pop().expect("counted above"));
        }
        let slots = (seq.len..new_len)
            .map(|p| seq.slot(p, self.block_size))
            .collect();
        seq.len = new_len;
        Ok(slots)
    }

    /// Returns `seq`'s blocks to the pool.
    pub fn release(&mut self, seq: &mut SeqBlocks) {
        self.free.extend(seq.blocks.drain(..));
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        seq.len = 0;
    }
}

/// The block tables of a decode batch as the kernel reads them: u32 [n_seqs, max_blocks],
/// each row padded with block 0 (never read: a sequence's context length bounds its reads).
pub fn block_tables(seqs: &[&SeqBlocks]) -> (Vec<u32>, u32) {
    let max_blocks = seqs
        .iter()
        .map(|s| s.blocks.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut table = vec![0u32; seqs.len() * max_blocks];
    for (i, s) in seqs.iter().enumerate() {
        table[i * max_blocks..i * max_blocks + s.blocks.len()].copy_from_slice(&s.blocks);
    }
    (table, max_blocks as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_takes_blocks_as_it_grows_and_slots_follow_its_table() {
        let mut a = BlockAllocator::new(4, 16);
        let mut s = SeqBlocks::default();
        let slots = a.append(&mut s, 17).expect("fits");
        assert_eq!(s.blocks(), &[0, 1]);
        assert_eq!(slots.len(), 17);
        assert_eq!(slots[0], 0);
        assert_eq!(slots[15], 15);
        assert_eq!(slots[16], 16); // block 1, offset 0
        assert_eq!(a.free_blocks(), 2);
        // 15 more fill block 1 without taking a new one.
        a.append(&mut s, 15).expect("fits");
        assert_eq!(a.free_blocks(), 2);
        assert_eq!(s.len(), 32);
        let next = a.append(&mut s, 1).expect("fits");
        assert_eq!(next, vec![2 * 16]);
    }

    #[test]
    fn interleaved_sequences_get_disjoint_slots() {
        let mut a = BlockAllocator::new(8, 4);
        let (mut x, mut y) = (SeqBlocks::default(), SeqBlocks::default());
        let mut all = Vec::new();
        for _ in 0..6 {
            all.extend(a.append(&mut x, 1).expect("fits"));
            all.extend(a.append(&mut y, 2).expect("fits"));
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a slot was given twice");
        assert!(all.iter().all(|&s| s < 32));
    }

    #[test]
    fn a_full_cache_refuses_without_changing_anything() {
        let mut a = BlockAllocator::new(2, 8);
        let mut s = SeqBlocks::default();
        a.append(&mut s, 10).expect("fits");
        let before = s.clone();
        assert_eq!(a.append(&mut s, 7), Err(KvFull { needed: 1, free: 0 }));
        assert_eq!(s, before);
        a.append(&mut s, 6)
            .expect("the second block still has room");
    }

    #[test]
    fn released_blocks_are_reused_lowest_first() {
        let mut a = BlockAllocator::new(3, 2);
        let (mut x, mut y) = (SeqBlocks::default(), SeqBlocks::default());
        a.append(&mut x, 4).expect("fits");
        a.append(&mut y, 2).expect("fits");
        assert_eq!(a.free_blocks(), 0);
        a.release(&mut x);
        assert!(x.is_empty());
        assert_eq!(a.free_blocks(), 2);
        let mut z = SeqBlocks::default();
        a.append(&mut z, 1).expect("fits");
        assert_eq!(z.blocks(), &[0]);
    }

    #[test]
    fn block_tables_pad_rows_to_the_longest() {
        let mut a = BlockAllocator::new(8, 2);
        let (mut x, mut y) = (SeqBlocks::default(), SeqBlocks::default());
        a.append(&mut x, 5).expect("fits"); // 3 blocks
        a.append(&mut y, 1).expect("fits"); // 1 block
        let (t, max) = block_tables(&[&x, &y]);
        assert_eq!(max, 3);
        assert_eq!(t, vec![0, 1, 2, 3, 0, 0]);
    }
}
