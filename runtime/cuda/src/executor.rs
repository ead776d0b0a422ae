//! The GPU executor of a decoder model. **Compiled and type-checked here, never executed on a
//! GPU yet** (no device was available to the session that wrote it; see SPEC 9).
//!
//! - [`GpuContext`]: one per process and GPU: the CUDA context and every kernel, compiled by
//!   NVRTC for this GPU's architecture when the context opens.
//! - [`SharedModel`]: a model's weights, uploaded once and shared (an `Arc`) by every replica
//!   of the node; [`ModelCache`] hands the same upload to every replica that asks for the
//!   same key.
//! - [`Replica`]: one CUDA stream with its own cuBLAS handle, paged KV cache, activation
//!   scratch and pinned host buffers; replicas of a node run concurrently on one GPU.
//!
//! A step is one forward pass: whole prompts (prefill) or one token for each running
//! sequence (batched decode). Matmuls of f16 weights go to cuBLAS (`cublasGemmEx`, f16
//! inputs, f32 output and accumulation); int8/int4 weights to the dequantizing GEMV kernels;
//! everything else to the kernels of `kernels/`. The residual stream is f32, matmul inputs f16,
//! the KV cache f16.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DevicePtrMut, PinnedHostSlice, PushKernelArg,
};

use crate::batch::{AttentionInputs, KvState, SeqId, StepError, StepInputs};
use crate::budget::{kv_bytes_per_token, BudgetError, KvBudget};
use crate::kernels::KERNEL_FILES;
use crate::launch::{as_u32, Launch, LaunchError};
use crate::model::{
    DecoderConfig, HostLinear, HostNorm, HostWeights, LinearGemm, Mlp, ModelError, Norm, Positions,
    WeightFormat,
};
use crate::nvrtc::{Nvrtc, NvrtcError};
use crate::paged_kv::BlockAllocator;
use crate::quant::{quantize_int4, quantize_int8, to_f16, QuantError};

/// Tokens per KV-cache block.
pub const BLOCK_SIZE: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Nvrtc(#[from] NvrtcError),
    #[error("CUDA: {0:?}")]
    Driver(cudarc::driver::DriverError),
    #[error("cuBLAS: {0:?}")]
    Blas(cudarc::cublas::result::CublasError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("kernel `{0}` was not compiled")]
    MissingKernel(&'static str),
}

impl From<cudarc::driver::DriverError> for GpuError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        GpuError::Driver(e)
    }
}
impl From<cudarc::cublas::result::CublasError> for GpuError {
    fn from(e: cudarc::cublas::result::CublasError) -> Self {
        GpuError::Blas(e)
    }
}

/// A GPU with every kernel loaded.
pub struct GpuContext {
    ctx: Arc<CudaContext>,
    arch: String,
    functions: BTreeMap<&'static str, CudaFunction>,
}

impl GpuContext {
    /// Opens GPU `ordinal` and compiles every kernel for it.
    pub fn open(ordinal: usize) -> Result<Arc<GpuContext>, GpuError> {
        let nvrtc = Nvrtc::load()?;
        crate::probe::with_driver(|| Ok(())).map_err(GpuError::Unavailable)?;
        let opened = std::panic::catch_unwind(|| -> Result<GpuContext, GpuError> {
            let ctx = CudaContext::new(ordinal)?;
            let (major, minor) = ctx.compute_capability()?;
            let arch = format!("sm_{major}{minor}");
            let mut functions = BTreeMap::new();
            for file in KERNEL_FILES {
                let module = ctx.load_module(nvrtc.compile(file, &arch)?)?;
                for &f in file.functions {
                    functions.insert(f, module.load_function(f)?);
                }
            }
            Ok(GpuContext {
                ctx,
                arch,
                functions,
            })
        });
        match opened {
            Ok(r) => r.map(Arc::new),
            Err(_) => Err(GpuError::Unavailable(format!(
                "opening GPU {ordinal} panicked inside cudarc (a missing driver symbol?)"
            ))),
        }
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(u64, u64), GpuError> {
        let (free, total) = self.ctx.mem_get_info()?;
        Ok((free as u64, total as u64))
    }

    fn function(&self, name: &'static str) -> Result<&CudaFunction, GpuError> {
        self.functions
            .get(name)
            .ok_or(GpuError::MissingKernel(name))
    }
}

/// A linear layer's weight on the device.
enum DeviceWeight {
    F16(CudaSlice<u16>),
    Int8 {
        weight: CudaSlice<i8>,
        scales: CudaSlice<f32>,
    },
    Int4 {
        weight: CudaSlice<u8>,
        scales: CudaSlice<u16>,
        group: u32,
    },
}

struct DeviceLinear {
    weight: DeviceWeight,
    bias: Option<CudaSlice<f32>>,
    out: usize,
    inp: usize,
}

struct DeviceNorm {
    weight: CudaSlice<f32>,
    bias: Option<CudaSlice<f32>>,
}

struct DeviceLayer {
    attn_norm: DeviceNorm,
    qkv: DeviceLinear,
    out: DeviceLinear,
    mlp_norm: DeviceNorm,
    up: DeviceLinear,
    down: DeviceLinear,
}

/// A model's weights on one GPU, shared by its replicas.
pub struct SharedModel {
    gpu: Arc<GpuContext>,
    config: DecoderConfig,
    format: WeightFormat,
    token_embedding: CudaSlice<u16>,
    position_embedding: Option<CudaSlice<u16>>,
    layers: Vec<DeviceLayer>,
    final_norm: DeviceNorm,
    head: DeviceLinear,
}

impl SharedModel {
    /// Checks `weights` against `config` and uploads them (linear layers in `format`).
    pub fn upload(
        gpu: &Arc<GpuContext>,
        config: DecoderConfig,
        weights: &HostWeights,
        format: WeightFormat,
    ) -> Result<Arc<SharedModel>, GpuError> {
        config.check_weights(weights)?;
        let stream = gpu.ctx.default_stream();
        let linear = |l: &HostLinear| -> Result<DeviceLinear, GpuError> {
            let (out, inp) = (l.weight.shape[0], l.weight.shape[1]);
            let weight = match format {
                WeightFormat::F16 => DeviceWeight::F16(stream.clone_htod(&to_f16(&l.weight.data))?),
                WeightFormat::Int8 => {
                    let q = quantize_int8(&l.weight.data, out, inp)?;
                    DeviceWeight::Int8 {
                        weight: stream.clone_htod(&q.weights)?,
                        scales: stream.clone_htod(&q.scales)?,
                    }
                }
                WeightFormat::Int4 { group } => {
                    let q = quantize_int4(&l.weight.data, out, inp, group)?;
                    DeviceWeight::Int4 {
                        weight: stream.clone_htod(&q.packed)?,
                        scales: stream.clone_htod(&q.scales)?,
                        group: as_u32("int4 group", group)?,
                    }
                }
            };
            let bias = l
                .bias
                .as_ref()
                .map(|b| stream.clone_htod(&b.data))
                .transpose()?;
            Ok(DeviceLinear {
                weight,
                bias,
                out,
                inp,
            })
        };
        let norm = |n: &HostNorm| -> Result<DeviceNorm, GpuError> {
            Ok(DeviceNorm {
                weight: stream.clone_htod(&n.weight.data)?,
                bias: n
                    .bias
                    .as_ref()
                    .map(|b| stream.clone_htod(&b.data))
                    .transpose()?,
            })
        };
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(DeviceLayer {
                    attn_norm: norm(&l.attn_norm)?,
                    qkv: linear(&l.qkv)?,
                    out: linear(&l.out)?,
                    mlp_norm: norm(&l.mlp_norm)?,
                    up: linear(&l.up)?,
                    down: linear(&l.down)?,
                })
            })
            .collect::<Result<Vec<_>, GpuError>>()?;
        let tied = HostLinear {
            weight: weights.token_embedding.clone(),
            bias: None,
        };
        let head = linear(weights.head.as_ref().unwrap_or(&tied))?;
        let model = SharedModel {
            gpu: gpu.clone(),
            token_embedding: stream.clone_htod(&to_f16(&weights.token_embedding.data))?,
            position_embedding: weights
                .position_embedding
                .as_ref()
                .map(|p| stream.clone_htod(&to_f16(&p.data)))
                .transpose()?,
            layers,
            final_norm: norm(&weights.final_norm)?,
            head,
            config,
            format,
        };
        stream.synchronize()?;
        Ok(Arc::new(model))
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }
    pub fn format(&self) -> WeightFormat {
        self.format
    }
}

/// Uploads shared by key (the weights file and its format): the first replica of a node
/// uploads, the others get the same `Arc`; the weights leave the GPU with the last replica.
#[derive(Default)]
pub struct ModelCache {
    models: Mutex<BTreeMap<String, Weak<SharedModel>>>,
}

impl ModelCache {
    pub fn get_or_upload(
        &self,
        key: &str,
        upload: impl FnOnce() -> Result<Arc<SharedModel>, GpuError>,
    ) -> Result<Arc<SharedModel>, GpuError> {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = models.get(key).and_then(Weak::upgrade) {
            return Ok(m);
        }
        let m = upload()?;
        models.insert(key.to_string(), Arc::downgrade(&m));
        Ok(m)
    }
}

/// How the next token is chosen for one sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Top-p at a temperature, with this sequence's uniform draw in [0, 1).
    TopP {
        temperature: f32,
        top_p: f32,
        uniform: f32,
    },
}

/// Activation buffers for up to `max_tokens` tokens per step and `max_seqs` sequences.
struct Scratch {
    x: CudaSlice<f32>,
    h: CudaSlice<u16>,
    qkv: CudaSlice<f32>,
    attn: CudaSlice<u16>,
    proj: CudaSlice<f32>,
    up: CudaSlice<f32>,
    act: CudaSlice<u16>,
    logits: CudaSlice<f32>,
    ids: CudaSlice<u32>,
    positions: CudaSlice<u32>,
    slots: CudaSlice<u32>,
    seq_starts: CudaSlice<u32>,
    token_seq: CudaSlice<u32>,
    block_tables: CudaSlice<u32>,
    context_lens: CudaSlice<u32>,
    uniforms: CudaSlice<f32>,
    next: CudaSlice<u32>,
}

/// Page-locked host buffers: step inputs are staged here and copied asynchronously; results
/// come back here.
struct Pinned {
    inputs: PinnedHostSlice<u32>,
    logits: PinnedHostSlice<f32>,
    next: PinnedHostSlice<u32>,
}

/// One replica: a CUDA stream over the shared weights with its own KV cache.
pub struct Replica {
    model: Arc<SharedModel>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k_cache: Vec<CudaSlice<u16>>,
    v_cache: Vec<CudaSlice<u16>>,
    kv: KvState,
    scratch: Scratch,
    pinned: Pinned,
    max_tokens: usize,
    max_seqs: usize,
    /// Rows of `scratch.logits` the last step filled.
    logit_rows: usize,
}

/// Sizes of a replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaShape {
    /// Tokens in one step (the longest prefill batch).
    pub max_tokens: usize,
    /// Sequences decoded together.
    pub max_seqs: usize,
    /// Replicas of this node on the GPU (they split its free memory).
    pub replicas: u32,
    /// The model's `kv_tokens` when set (> 0): the cache never exceeds it.
    pub kv_tokens: Option<u64>,
}

impl Replica {
    /// A new stream, cuBLAS handle, scratch and a KV cache sized from the GPU's free memory.
    pub fn new(model: Arc<SharedModel>, shape: ReplicaShape) -> Result<Replica, GpuError> {
        let c = model.config.clone();
        let ctx = model.gpu.ctx.clone();
        let (free, _) = model.gpu.memory()?;
        let budget = KvBudget {
            free_bytes: free,
            replicas: shape.replicas,
            scratch_bytes: c.scratch_bytes(shape.max_tokens.max(shape.max_seqs)),
            kv_bytes_per_token: kv_bytes_per_token(c.n_layers, c.n_kv_heads, c.head_dim),
            block_size: BLOCK_SIZE,
        };
        let kv_tokens = budget.kv_tokens(shape.kv_tokens)?;
        let n_blocks = as_u32("KV blocks", (kv_tokens / u64::from(BLOCK_SIZE)) as usize)?;
        let slots = n_blocks as usize * BLOCK_SIZE as usize;
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let mut k_cache = Vec::with_capacity(c.n_layers);
        let mut v_cache = Vec::with_capacity(c.n_layers);
        for _ in 0..c.n_layers {
            k_cache.push(stream.alloc_zeros::<u16>(slots * c.kv_width())?);
            v_cache.push(stream.alloc_zeros::<u16>(slots * c.kv_width())?);
        }
        let t = shape.max_tokens.max(shape.max_seqs);
        let s = shape.max_seqs;
        let max_blocks = (c.max_positions as u32).div_ceil(BLOCK_SIZE) as usize;
        let scratch = Scratch {
            x: stream.alloc_zeros(t * c.d_model)?,
            h: stream.alloc_zeros(t * c.d_model)?,
            qkv: stream.alloc_zeros(t * c.qkv_width())?,
            attn: stream.alloc_zeros(t * c.q_width())?,
            proj: stream.alloc_zeros(t * c.d_model)?,
            up: stream.alloc_zeros(t * c.up_width())?,
            act: stream.alloc_zeros(t * c.d_ff)?,
            logits: stream.alloc_zeros(s * c.vocab)?,
            ids: stream.alloc_zeros(t)?,
            positions: stream.alloc_zeros(t)?,
            slots: stream.alloc_zeros(t)?,
            seq_starts: stream.alloc_zeros(s + 1)?,
            token_seq: stream.alloc_zeros(t)?,
            block_tables: stream.alloc_zeros(s * max_blocks)?,
            context_lens: stream.alloc_zeros(s)?,
            uniforms: stream.alloc_zeros(s)?,
            next: stream.alloc_zeros(s)?,
        };
        // SAFETY: pinned buffers are written before they are read (inputs are staged in full
        // before each copy; results are read only after the copy that fills them).
        let pinned = unsafe {
            Pinned {
                inputs: ctx.alloc_pinned::<u32>(t)?,
                logits: ctx.alloc_pinned_with_flags::<f32>(s * c.vocab, 0)?,
                next: ctx.alloc_pinned_with_flags::<u32>(s, 0)?,
            }
        };
        Ok(Replica {
            kv: KvState::new(
                BlockAllocator::new(n_blocks, BLOCK_SIZE),
                c.max_positions as u32,
                t,
            ),
            model,
            stream,
            blas,
            k_cache,
            v_cache,
            scratch,
            pinned,
            max_tokens: t,
            max_seqs: s,
            logit_rows: 0,
        })
    }

    /// Tokens this replica's KV cache holds: its `kv_tokens` bound.
    pub fn kv_tokens(&self) -> u64 {
        self.kv.allocator().capacity_tokens()
    }

    /// Starts `prompts` and computes each one's next-token logits.
    pub fn prefill(&mut self, prompts: &[(SeqId, &[u32])]) -> Result<(), GpuError> {
        if prompts.len() > self.max_seqs {
            return Err(StepError::TooManyTokens {
                tokens: prompts.len(),
                max: self.max_seqs,
            }
            .into());
        }
        let step = self.kv.plan_prefill(prompts)?;
        let ran = self.forward(&step);
        if ran.is_err() {
            for (id, _) in prompts {
                self.kv.release(*id);
            }
        }
        ran
    }

    /// Appends one token to each sequence and computes their next-token logits.
    pub fn decode(&mut self, step: &[(SeqId, u32)]) -> Result<(), GpuError> {
        if step.len() > self.max_seqs {
            return Err(StepError::TooManyTokens {
                tokens: step.len(),
                max: self.max_seqs,
            }
            .into());
        }
        let inputs = self.kv.plan_decode(step)?;
        self.forward(&inputs)
    }

    /// Ends a sequence and frees its cache blocks.
    pub fn release(&mut self, id: SeqId) {
        self.kv.release(id);
    }

    /// The last step's logits, one row of `vocab` per sequence in the step's order.
    pub fn logits(&mut self) -> Result<Vec<f32>, GpuError> {
        let n = self.logit_rows * self.model.config.vocab;
        self.stream
            .memcpy_dtoh(&self.scratch.logits.slice(..n), &mut self.pinned.logits)?;
        self.stream.synchronize()?;
        Ok(self.pinned.logits.as_slice()?[..n].to_vec())
    }

    /// The next token of each sequence of the last step.
    pub fn next_tokens(&mut self, sampling: &[Sampling]) -> Result<Vec<u32>, GpuError> {
        let rows = self.logit_rows;
        if sampling.len() != rows {
            return Err(GpuError::Unavailable(format!(
                "{} sampling settings for {rows} sequences",
                sampling.len()
            )));
        }
        let vocab = as_u32("vocab", self.model.config.vocab)?;
        let gpu = self.model.gpu.clone();
        for (r, s) in sampling.iter().enumerate() {
            let row_logits = self
                .scratch
                .logits
                .slice(r * vocab as usize..(r + 1) * vocab as usize);
            let mut out = self.scratch.next.slice_mut(r..r + 1);
            let one = 1u32;
            let launch = Launch::rows("sampling", 1)?;
            match *s {
                Sampling::Greedy => {
                    let mut b = self.stream.launch_builder(gpu.function("argmax_rows")?);
                    b.arg(&row_logits).arg(&mut out).arg(&one).arg(&vocab);
                    // SAFETY: argmax_rows(logits [1, vocab], out [1], rows, vocab), as in sampling.cu.
                    unsafe { b.launch(launch.config()) }?;
                }
                Sampling::TopP {
                    temperature,
                    top_p,
                    uniform,
                } => {
                    let u = [uniform.clamp(0.0, 1.0 - f32::EPSILON)];
                    self.stream
                        .memcpy_htod(&u, &mut self.scratch.uniforms.slice_mut(r..r + 1))?;
                    let uniforms = self.scratch.uniforms.slice(r..r + 1);
                    let inv_t = 1.0 / temperature.max(1e-6);
                    let mut b = self.stream.launch_builder(gpu.function("top_p_sample")?);
                    b.arg(&row_logits)
                        .arg(&uniforms)
                        .arg(&mut out)
                        .arg(&one)
                        .arg(&vocab)
                        .arg(&inv_t)
                        .arg(&top_p);
                    // SAFETY: top_p_sample's contract in sampling.cu; block = SAMPLE_THREADS (256).
                    unsafe { b.launch(launch.config()) }?;
                }
            }
        }
        self.stream
            .memcpy_dtoh(&self.scratch.next.slice(..rows), &mut self.pinned.next)?;
        self.stream.synchronize()?;
        Ok(self.pinned.next.as_slice()?[..rows].to_vec())
    }

    /// Copies `values` into `dst` through the pinned staging buffer.
    fn upload_u32(
        stream: &Arc<CudaStream>,
        pinned: &mut PinnedHostSlice<u32>,
        values: &[u32],
        dst: &mut CudaSlice<u32>,
    ) -> Result<(), GpuError> {
        if values.is_empty() {
            return Ok(());
        }
        // The previous copy out of the staging buffer must be done before it is rewritten.
        stream.synchronize()?;
        pinned.as_mut_slice()?[..values.len()].copy_from_slice(values);
        let staged = &pinned.as_slice()?[..values.len()];
        stream.memcpy_htod(staged, &mut dst.slice_mut(..values.len()))?;
        Ok(())
    }

    /// One forward pass over `step`'s tokens, leaving the logits of each sequence's last
    /// token in `scratch.logits`.
    fn forward(&mut self, step: &StepInputs) -> Result<(), GpuError> {
        let model = self.model.clone();
        let c = &model.config;
        let gpu = &model.gpu;
        let tokens = step.ids.len();
        if tokens == 0 || tokens > self.max_tokens {
            return Err(StepError::TooManyTokens {
                tokens,
                max: self.max_tokens,
            }
            .into());
        }
        let stream = self.stream.clone();
        let s = &mut self.scratch;
        let pinned = &mut self.pinned.inputs;
        Self::upload_u32(&stream, pinned, &step.ids, &mut s.ids)?;
        Self::upload_u32(&stream, pinned, &step.positions, &mut s.positions)?;
        Self::upload_u32(&stream, pinned, &step.slots, &mut s.slots)?;
        match &step.attention {
            AttentionInputs::Prefill {
                seq_starts,
                token_seq,
            } => {
                Self::upload_u32(&stream, pinned, seq_starts, &mut s.seq_starts)?;
                Self::upload_u32(&stream, pinned, token_seq, &mut s.token_seq)?;
            }
            AttentionInputs::Decode {
                block_tables,
                context_lens,
                ..
            } => {
                Self::upload_u32(&stream, pinned, block_tables, &mut s.block_tables)?;
                Self::upload_u32(&stream, pinned, context_lens, &mut s.context_lens)?;
            }
        }

        let t = as_u32("tokens", tokens)?;
        let d = as_u32("d_model", c.d_model)?;
        let vocab = as_u32("vocab", c.vocab)?;
        let n_heads = as_u32("heads", c.n_heads)?;
        let n_kv = as_u32("kv heads", c.n_kv_heads)?;
        let hd = as_u32("head_dim", c.head_dim)?;
        let qkv_w = as_u32("qkv width", c.qkv_width())?;
        let ff = as_u32("d_ff", c.d_ff)?;
        let scale = 1.0 / (c.head_dim as f32).sqrt();
        let td = tokens * c.d_model;

        // Embeddings.
        {
            let mut b = stream.launch_builder(gpu.function("embedding_gather")?);
            b.arg(&model.token_embedding)
                .arg(&s.ids)
                .arg(&mut s.x)
                .arg(&t)
                .arg(&d)
                .arg(&vocab)
                .arg(&c.embedding_scale);
            // SAFETY: embedding.cu's contract; ids were checked against the vocabulary by the caller
            // (an id out of range writes zeros, never out of bounds).
            unsafe { b.launch(Launch::rows("embedding_gather", tokens)?.config()) }?;
        }
        if let (Positions::Learned, Some(table)) = (c.positions, &model.position_embedding) {
            let max_pos = as_u32("max positions", c.max_positions)?;
            let mut b = stream.launch_builder(gpu.function("embedding_add_positions")?);
            b.arg(&mut s.x)
                .arg(table)
                .arg(&s.positions)
                .arg(&t)
                .arg(&d)
                .arg(&max_pos);
            // SAFETY: embedding.cu's contract.
            unsafe { b.launch(Launch::rows("embedding_add_positions", tokens)?.config()) }?;
        }

        for (l, layer) in model.layers.iter().enumerate() {
            norm(
                gpu,
                &stream,
                c.norm,
                &layer.attn_norm,
                &s.x,
                &mut s.h,
                tokens,
                d,
            )?;
            linear(
                gpu,
                &stream,
                &self.blas,
                &layer.qkv,
                &s.h.slice(..tokens * c.d_model),
                &mut s.qkv.slice_mut(..tokens * c.qkv_width()),
                tokens,
            )?;
            if let Positions::Rope { theta } = c.positions {
                for (heads, offset) in [(n_heads, 0u32), (n_kv, n_heads * hd)] {
                    let mut b = stream.launch_builder(gpu.function("rope")?);
                    b.arg(&mut s.qkv)
                        .arg(&s.positions)
                        .arg(&t)
                        .arg(&heads)
                        .arg(&hd)
                        .arg(&qkv_w)
                        .arg(&offset)
                        .arg(&theta);
                    // SAFETY: rope.cu's contract: q heads at column 0, k heads after them.
                    unsafe { b.launch(Launch::rope(tokens, heads as usize)?.config()) }?;
                }
            }
            {
                let mut b = stream.launch_builder(gpu.function("kv_cache_write")?);
                b.arg(&s.qkv)
                    .arg(&mut self.k_cache[l])
                    .arg(&mut self.v_cache[l])
                    .arg(&s.slots)
                    .arg(&t)
                    .arg(&n_heads)
                    .arg(&n_kv)
                    .arg(&hd)
                    .arg(&qkv_w);
                // SAFETY: attention.cu's contract; every slot was allocated to its sequence.
                unsafe { b.launch(Launch::rows("kv_cache_write", tokens)?.config()) }?;
            }
            match &step.attention {
                AttentionInputs::Prefill { .. } => {
                    let mut b = stream.launch_builder(gpu.function("attention_prefill")?);
                    b.arg(&s.qkv)
                        .arg(&mut s.attn)
                        .arg(&s.seq_starts)
                        .arg(&s.token_seq)
                        .arg(&t)
                        .arg(&n_heads)
                        .arg(&n_kv)
                        .arg(&hd)
                        .arg(&qkv_w)
                        .arg(&scale);
                    // SAFETY: attention.cu's contract (head_dim checked by the config).
                    unsafe {
                        b.launch(
                            Launch::attention("attention_prefill", tokens, c.n_heads)?.config(),
                        )
                    }?;
                }
                AttentionInputs::Decode { max_blocks, .. } => {
                    let block_size = BLOCK_SIZE;
                    let mut b = stream.launch_builder(gpu.function("paged_attention_decode")?);
                    b.arg(&s.qkv)
                        .arg(&self.k_cache[l])
                        .arg(&self.v_cache[l])
                        .arg(&s.block_tables)
                        .arg(&s.context_lens)
                        .arg(&mut s.attn)
                        .arg(&t)
                        .arg(&n_heads)
                        .arg(&n_kv)
                        .arg(&hd)
                        .arg(&block_size)
                        .arg(max_blocks)
                        .arg(&qkv_w)
                        .arg(&scale);
                    // SAFETY: attention.cu's contract; block tables cover every context position.
                    unsafe {
                        b.launch(
                            Launch::attention("paged_attention_decode", tokens, c.n_heads)?
                                .config(),
                        )
                    }?;
                }
            }
            linear(
                gpu,
                &stream,
                &self.blas,
                &layer.out,
                &s.attn.slice(..tokens * c.q_width()),
                &mut s.proj.slice_mut(..td),
                tokens,
            )?;
            residual_add(gpu, &stream, &mut s.x, &s.proj, td)?;

            norm(
                gpu,
                &stream,
                c.norm,
                &layer.mlp_norm,
                &s.x,
                &mut s.h,
                tokens,
                d,
            )?;
            linear(
                gpu,
                &stream,
                &self.blas,
                &layer.up,
                &s.h.slice(..td),
                &mut s.up.slice_mut(..tokens * c.up_width()),
                tokens,
            )?;
            let (kernel, n) = match c.mlp {
                Mlp::SiluGated => ("silu_gate", tokens * c.d_ff),
                Mlp::GeluTanhGated => ("gelu_tanh_gate", tokens * c.d_ff),
                Mlp::GeluTanh => ("gelu_tanh", tokens * c.d_ff),
            };
            {
                let mut b = stream.launch_builder(gpu.function(kernel)?);
                let total = as_u32("mlp width", n)?;
                b.arg(&s.up).arg(&mut s.act);
                if c.mlp == Mlp::GeluTanh {
                    b.arg(&total);
                } else {
                    b.arg(&t).arg(&ff);
                }
                // SAFETY: activation.cu's contract for the kernel chosen.
                unsafe { b.launch(Launch::elementwise(kernel, n)?.config()) }?;
            }
            linear(
                gpu,
                &stream,
                &self.blas,
                &layer.down,
                &s.act.slice(..tokens * c.d_ff),
                &mut s.proj.slice_mut(..td),
                tokens,
            )?;
            residual_add(gpu, &stream, &mut s.x, &s.proj, td)?;
        }

        norm(
            gpu,
            &stream,
            c.norm,
            &model.final_norm,
            &s.x,
            &mut s.h,
            tokens,
            d,
        )?;
        for (r, &row) in step.last_rows.iter().enumerate() {
            let row = row as usize;
            let h = s.h.slice(row * c.d_model..(row + 1) * c.d_model);
            let mut logits = s.logits.slice_mut(r * c.vocab..(r + 1) * c.vocab);
            linear(gpu, &stream, &self.blas, &model.head, &h, &mut logits, 1)?;
        }
        self.logit_rows = step.last_rows.len();
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn norm(
    gpu: &GpuContext,
    stream: &Arc<CudaStream>,
    kind: Norm,
    n: &DeviceNorm,
    x: &CudaSlice<f32>,
    out: &mut CudaSlice<u16>,
    rows: usize,
    dim: u32,
) -> Result<(), GpuError> {
    let r = as_u32("rows", rows)?;
    let launch = Launch::rows("norm", rows)?;
    match (kind, &n.bias) {
        (Norm::Rms { eps, weight_offset }, _) => {
            let mut b = stream.launch_builder(gpu.function("rms_norm")?);
            b.arg(x)
                .arg(&n.weight)
                .arg(out)
                .arg(&r)
                .arg(&dim)
                .arg(&eps)
                .arg(&weight_offset);
            // SAFETY: norm.cu's contract.
            unsafe { b.launch(launch.config()) }?;
        }
        (Norm::Layer { eps }, Some(bias)) => {
            let mut b = stream.launch_builder(gpu.function("layer_norm")?);
            b.arg(x)
                .arg(&n.weight)
                .arg(bias)
                .arg(out)
                .arg(&r)
                .arg(&dim)
                .arg(&eps);
            // SAFETY: norm.cu's contract.
            unsafe { b.launch(launch.config()) }?;
        }
        (Norm::Layer { .. }, None) => {
            return Err(ModelError::Missing("a LayerNorm bias".into()).into());
        }
    }
    Ok(())
}

fn residual_add(
    gpu: &GpuContext,
    stream: &Arc<CudaStream>,
    x: &mut CudaSlice<f32>,
    y: &CudaSlice<f32>,
    n: usize,
) -> Result<(), GpuError> {
    let total = as_u32("residual", n)?;
    let mut b = stream.launch_builder(gpu.function("residual_add")?);
    b.arg(x).arg(y).arg(&total);
    // SAFETY: elementwise.cu's contract; both buffers hold at least n values.
    unsafe { b.launch(Launch::elementwise("residual_add", n)?.config()) }?;
    Ok(())
}

/// `y[tokens, out] = x[tokens, in] · Wᵀ (+ bias)`.
fn linear(
    gpu: &GpuContext,
    stream: &Arc<CudaStream>,
    blas: &CudaBlas,
    l: &DeviceLinear,
    x: &CudaView<'_, u16>,
    y: &mut CudaViewMut<'_, f32>,
    tokens: usize,
) -> Result<(), GpuError> {
    let rows = as_u32("rows", tokens)?;
    let inp = as_u32("in", l.inp)?;
    let out = as_u32("out", l.out)?;
    match &l.weight {
        DeviceWeight::F16(w) => {
            let g = LinearGemm::new(tokens, l.inp, l.out)?;
            let (alpha, beta) = (1.0f32, 0.0f32);
            let (wp, _w) = w.device_ptr(stream);
            let (xp, _x) = x.device_ptr(stream);
            let (yp, _y) = y.device_ptr_mut(stream);
            // SAFETY: W [out, in], X [tokens, in] f16 and Y [tokens, out] f32 are live device
            // buffers of those sizes; the parameters are LinearGemm's (tested on the CPU).
            unsafe {
                blas::gemm_ex(
                    *blas.handle(),
                    blas_sys::cublasOperation_t::CUBLAS_OP_T,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    g.m,
                    g.n,
                    g.k,
                    (&alpha) as *const f32 as *const _,
                    wp as *const _,
                    blas_sys::cudaDataType_t::CUDA_R_16F,
                    g.lda,
                    xp as *const _,
                    blas_sys::cudaDataType_t::CUDA_R_16F,
                    g.ldb,
                    (&beta) as *const f32 as *const _,
                    yp as *mut _,
                    blas_sys::cudaDataType_t::CUDA_R_32F,
                    g.ldc,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }?;
        }
        DeviceWeight::Int8 { weight, scales } => {
            let mut b = stream.launch_builder(gpu.function("gemv_int8")?);
            b.arg(weight)
                .arg(scales)
                .arg(x)
                .arg(&mut *y)
                .arg(&rows)
                .arg(&inp)
                .arg(&out);
            // SAFETY: gemv_quant.cu's contract (layout packed by quant.rs).
            unsafe { b.launch(Launch::gemv("gemv_int8", l.out, tokens)?.config()) }?;
        }
        DeviceWeight::Int4 {
            weight,
            scales,
            group,
        } => {
            let mut b = stream.launch_builder(gpu.function("gemv_int4")?);
            b.arg(weight)
                .arg(scales)
                .arg(x)
                .arg(&mut *y)
                .arg(&rows)
                .arg(&inp)
                .arg(&out)
                .arg(group);
            // SAFETY: gemv_quant.cu's contract (layout packed by quant.rs).
            unsafe { b.launch(Launch::gemv("gemv_int4", l.out, tokens)?.config()) }?;
        }
    }
    if let Some(bias) = &l.bias {
        let mut b = stream.launch_builder(gpu.function("add_bias")?);
        b.arg(&mut *y).arg(bias).arg(&rows).arg(&out);
        // SAFETY: elementwise.cu's contract.
        unsafe { b.launch(Launch::elementwise("add_bias", tokens * l.out)?.config()) }?;
    }
    Ok(())
}
