//! One forward step's inputs, built on the host from the paged KV cache's bookkeeping: the
//! token ids, their positions, the cache slots their K and V go to, and what the attention
//! kernels need (prefill: where each prompt starts; decode: block tables and context lengths).
//! Pure: the executor uploads these arrays as they are.

use std::collections::BTreeMap;

use crate::paged_kv::{block_tables, BlockAllocator, KvFull, SeqBlocks};

/// A running sequence, named by the caller.
pub type SeqId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionInputs {
    /// Whole prompts packed one after another.
    Prefill {
        seq_starts: Vec<u32>,
        token_seq: Vec<u32>,
    },
    /// One token per sequence.
    Decode {
        block_tables: Vec<u32>,
        max_blocks: u32,
        context_lens: Vec<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInputs {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    pub attention: AttentionInputs,
    /// Row of each sequence's last token, in the order given: the rows whose logits are kept.
    pub last_rows: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Full(#[from] KvFull),
    #[error("sequence {0} is already running")]
    Duplicate(SeqId),
    #[error("sequence {0} is not running")]
    Unknown(SeqId),
    #[error("sequence {0} has an empty prompt")]
    Empty(SeqId),
    #[error("sequence {id} would reach position {len}, beyond the model's {max}")]
    TooLong { id: SeqId, len: u32, max: u32 },
    #[error("a step of {tokens} tokens exceeds the replica's {max}")]
    TooManyTokens { tokens: usize, max: usize },
}

/// The sequences of one replica and their cache blocks.
#[derive(Debug, Clone)]
pub struct KvState {
    alloc: BlockAllocator,
    seqs: BTreeMap<SeqId, SeqBlocks>,
    max_positions: u32,
    max_step_tokens: usize,
}

impl KvState {
    pub fn new(alloc: BlockAllocator, max_positions: u32, max_step_tokens: usize) -> KvState {
        KvState {
            alloc,
            seqs: BTreeMap::new(),
            max_positions,
            max_step_tokens,
        }
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.alloc
    }
    pub fn running(&self) -> usize {
        self.seqs.len()
    }
    pub fn len_of(&self, id: SeqId) -> Option<u32> {
        self.seqs.get(&id).map(SeqBlocks::len)
    }

    fn check_tokens(&self, tokens: usize) -> Result<(), StepError> {
        if tokens > self.max_step_tokens {
            return Err(StepError::TooManyTokens {
                tokens,
                max: self.max_step_tokens,
            });
        }
        Ok(())
    }

    /// Starts `prompts` (new sequences): all of them or, on an error, none.
    pub fn plan_prefill(&mut self, prompts: &[(SeqId, &[u32])]) -> Result<StepInputs, StepError> {
        let tokens: usize = prompts.iter().map(|(_, p)| p.len()).sum();
        self.check_tokens(tokens)?;
        let mut needed = 0u32;
        for (i, &(id, p)) in prompts.iter().enumerate() {
            if self.seqs.contains_key(&id) || prompts[..i].iter().any(|(o, _)| *o == id) {
                return Err(StepError::Duplicate(id));
            }
            if p.is_empty() {
                return Err(StepError::Empty(id));
            }
            let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
            if len > self.max_positions {
                return Err(StepError::TooLong {
                    id,
                    len,
                    max: self.max_positions,
                });
            }
            needed = needed.saturating_add(self.alloc.blocks_for(len));
        }
        if needed > self.alloc.free_blocks() {
            return Err(KvFull {
                needed,
                free: self.alloc.free_blocks(),
            }
            .into());
        }
        let mut step = StepInputs {
            ids: Vec::with_capacity(tokens),
            positions: Vec::with_capacity(tokens),
            slots: Vec::with_capacity(tokens),
            attention: AttentionInputs::Prefill {
                seq_starts: vec![0],
                token_seq: Vec::with_capacity(tokens),
            },
            last_rows: Vec::with_capacity(prompts.len()),
        };
        for (s, &(id, p)) in prompts.iter().enumerate() {
            let mut blocks = SeqBlocks::default();
            let slots = self
                .alloc
                .append(&mut blocks, p.len() as u32)
                .expect("capacity checked above");
            step.ids.extend_from_slice(p);
            step.positions.extend(0..p.len() as u32);
            step.slots.extend(slots);
            if let AttentionInputs::Prefill {
                seq_starts,
                token_seq,
            } = &mut step.attention
            {
                token_seq.extend(std::iter::repeat_n(s as u32, p.len()));
                seq_starts.push(step.ids.len() as u32);
            }
            step.last_rows.push(step.ids.len() as u32 - 1);
            self.seqs.insert(id, blocks);
        }
        Ok(step)
    }

    /// Appends one token to each of `step`'s sequences: all of them or, on an error, none.
    pub fn plan_decode(&mut self, step: &[(SeqId, u32)]) -> Result<StepInputs, StepError> {
        self.check_tokens(step.len())?;
        let mut needed = 0u32;
        for (i, &(id, _)) in step.iter().enumerate() {
            if step[..i].iter().any(|(o, _)| *o == id) {
                return Err(StepError::Duplicate(id));
            }
            let seq = self.seqs.get(&id).ok_or(StepError::Unknown(id))?;
            let len = seq.len() + 1;
            if len > self.max_positions {
                return Err(StepError::TooLong {
                    id,
                    len,
                    max: self.max_positions,
                });
            }
            needed += self.alloc.blocks_for(len) - seq.blocks().len() as u32;
        }
        if needed > self.alloc.free_blocks() {
            return Err(KvFull {
                needed,
                free: self.alloc.free_blocks(),
            }
            .into());
        }
        let mut inputs = StepInputs {
            ids: Vec::with_capacity(step.len()),
            positions: Vec::with_capacity(step.len()),
            slots: Vec::with_capacity(step.len()),
            attention: AttentionInputs::Decode {
                block_tables: Vec::new(),
                max_blocks: 0,
                context_lens: Vec::new(),
            },
            last_rows: (0..step.len() as u32).collect(),
        };
        let mut context_lens = Vec::with_capacity(step.len());
        for &(id, token) in step {
            let seq = self.seqs.get_mut(&id).expect("checked above");
            let position = seq.len();
            let slots = self.alloc.append(seq, 1).expect("capacity checked above");
            inputs.ids.push(token);
            inputs.positions.push(position);
            inputs.slots.extend(slots);
            context_lens.push(seq.len());
        }
        let seqs: Vec<&SeqBlocks> = step.iter().map(|(id, _)| &self.seqs[id]).collect();
        let (tables, max_blocks) = block_tables(&seqs);
        inputs.attention = AttentionInputs::Decode {
            block_tables: tables,
            max_blocks,
            context_lens,
        };
        Ok(inputs)
    }

    /// Ends a sequence, freeing its blocks. Unknown ids are ignored.
    pub fn release(&mut self, id: SeqId) {
        if let Some(mut s) = self.seqs.remove(&id) {
            self.alloc.release(&mut s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(blocks: u32) -> KvState {
        KvState::new(BlockAllocator::new(blocks, 4), 64, 256)
    }

    #[test]
    fn prefill_packs_prompts_and_marks_their_last_rows() {
        let mut kv = state(8);
        let step = kv
            .plan_prefill(&[(7, &[5, 6, 7]), (9, &[1, 2, 3, 4, 5])])
            .expect("fits");
        assert_eq!(step.ids, vec![5, 6, 7, 1, 2, 3, 4, 5]);
        assert_eq!(step.positions, vec![0, 1, 2, 0, 1, 2, 3, 4]);
        assert_eq!(step.last_rows, vec![2, 7]);
        assert_eq!(
            step.attention,
            AttentionInputs::Prefill {
                seq_starts: vec![0, 3, 8],
                token_seq: vec![0, 0, 0, 1, 1, 1, 1, 1]
            }
        );
        // Sequence 7 has block 0 (slots 0..3), sequence 9 blocks 1 and 2.
        assert_eq!(step.slots, vec![0, 1, 2, 4, 5, 6, 7, 8]);
        assert_eq!(kv.len_of(9), Some(5));
    }

    #[test]
    fn decode_appends_one_token_each_and_builds_block_tables() {
        let mut kv = state(8);
        kv.plan_prefill(&[(1, &[1, 1, 1, 1]), (2, &[2])])
            .expect("fits");
        let step = kv.plan_decode(&[(2, 20), (1, 10)]).expect("fits");
        assert_eq!(step.ids, vec![20, 10]);
        assert_eq!(step.positions, vec![1, 4]);
        // Sequence 2 continues in its block 1 (slot 5); sequence 1's fifth token opens block 2.
        assert_eq!(step.slots, vec![5, 8]);
        assert_eq!(
            step.attention,
            AttentionInputs::Decode {
                block_tables: vec![1, 0, 0, 2],
                max_blocks: 2,
                context_lens: vec![2, 5]
            }
        );
        assert_eq!(step.last_rows, vec![0, 1]);
    }

    #[test]
    fn a_step_that_does_not_fit_changes_nothing() {
        let mut kv = state(2);
        kv.plan_prefill(&[(1, &[1; 4])]).expect("fits");
        let e = kv
            .plan_prefill(&[(2, &[1; 3]), (3, &[1; 2])])
            .expect_err("needs 2 blocks, 1 free");
        assert_eq!(e, StepError::Full(KvFull { needed: 2, free: 1 }));
        assert_eq!(kv.running(), 1);
        assert_eq!(kv.allocator().free_blocks(), 1);
        kv.plan_prefill(&[(2, &[1; 4])]).expect("one block left");
        let before = kv.len_of(1);
        assert!(matches!(
            kv.plan_decode(&[(1, 0), (2, 0)]),
            Err(StepError::Full(_))
        ));
        assert_eq!(kv.len_of(1), before, "no sequence grew");
        kv.release(2);
        kv.plan_decode(&[(1, 0)]).expect("a block is free again");
    }

    #[test]
    fn bad_steps_are_refused_with_the_reason() {
        let mut kv = KvState::new(BlockAllocator::new(64, 4), 8, 16);
        kv.plan_prefill(&[(1, &[1; 8])]).expect("fits");
        assert_eq!(
            kv.plan_decode(&[(1, 0)]),
            Err(StepError::TooLong {
                id: 1,
                len: 9,
                max: 8
            })
        );
        assert_eq!(kv.plan_decode(&[(5, 0)]), Err(StepError::Unknown(5)));
        assert_eq!(kv.plan_prefill(&[(1, &[1])]), Err(StepError::Duplicate(1)));
        assert_eq!(kv.plan_prefill(&[(2, &[])]), Err(StepError::Empty(2)));
        assert_eq!(
            kv.plan_prefill(&[(3, &[1]), (3, &[1])]),
            Err(StepError::Duplicate(3))
        );
        assert_eq!(
            kv.plan_prefill(&[(4, &[1; 9])]),
            Err(StepError::TooLong {
                id: 4,
                len: 9,
                max: 8
            })
        );
        assert_eq!(
            kv.plan_prefill(&[(4, &[1; 8]), (6, &[1; 8]), (7, &[1; 1])]),
            Err(StepError::TooManyTokens {
                tokens: 17,
                max: 16
            })
        );
    }
}
