//! Custom CUDA ops for the trainer (issue 7: "custom burn ops that call NVIDIA's libraries
//! through cudarc" and "CubeCL kernels of your own"): cuBLAS GEMMs, fused causal attention
//! ([`attention`]), fused RMSNorm, RoPE, SwiGLU, target log-probabilities, the sum of
//! squares of gradient clipping and the bf16 ↔ f32 cast ([`fused`]), and a fused AdamW step
//! (with clipping's coefficient), all on burn's own device buffers.
//!
//! burn 0.21's CUDA matmul kernels (CubeCL) reach about 60 TFLOP/s in bf16 on an H200, a
//! tenth of the tensor-core rate (bench/RESULTS.md, "where the step goes"). This module
//! runs the model's matrix products through cuBLAS: the linear layers, `y = x · Wᵀ` for
//! x [M, K] and W [N, K], with their two backward GEMMs (`dx = dy · W` [M, K],
//! `dW = dyᵀ · x` [N, K]), and attention's batched products. `cublasGemmEx` /
//! `cublasGemmStridedBatchedEx`: bf16 or f32 operands, f32 accumulation
//! (`CUBLAS_COMPUTE_32F`, no TF32, as PyTorch's default). The element-wise ops are CUDA C
//! kernels that do their arithmetic in f32 whatever the storage dtype; each op is one
//! autodiff node that keeps only what its backward needs.
//!
//! Ordering: CubeCL launches on its own non-blocking streams, which this module cannot
//! see through burn 0.21's API. Kernels without a library call (the fused element-wise
//! ops, AdamW) are therefore handed to CubeCL itself as externally compiled kernels
//! ([`cube`]): CubeCL compiles them with NVRTC, caches their PTX and queues them in order
//! with its own work. Ops that call cuBLAS (the linear layers, attention) queue their
//! GEMMs and kernels on a stream of their own inside an [`on_stream`] session, ordered
//! against CubeCL's stream on the device: a kernel CubeCL queues signals a flag in device
//! memory that this stream waits for, and this stream signals another flag that a kernel
//! CubeCL queues waits for, so the host never waits for the GPU (`BAGEL_CUDA_HOST_WAIT=1`
//! switches to host waits: `ComputeClient::sync` before, a stream sync after). The signal
//! kernel is flushed out of CubeCL's client-side launch buffer before this stream waits
//! for it: CubeCL batches launches for its device thread, and a flag whose writer is still
//! in that buffer deadlocks as soon as this thread makes a driver call that waits for the
//! context (a module load, cuBLAS's lazy kernel loading). Counts and times are in
//! [`Stats`]. The per-thread state assumes operands from one thread (the trainer runs its
//! model on one thread).
//!
//! Dispatch: the entry points ([`matmul`], [`attention`], [`rms_norm`], [`rope`],
//! [`swiglu`], [`token_logps`], [`SquareSums`], [`cast`], [`adamw_step`], and the packed
//! projections' [`stack_rows`], [`attention_packed`], [`swiglu_packed`], [`residual_add`]) are called from the backend-generic model
//! and optimizer code. They check the backend type at run time (`TypeId`, then `Any`
//! downcasts of the primitives) and run only for the CUDA backends of this crate
//! ([`crate::CudaBackend`], [`crate::CudaBackendCheckpointed`], [`crate::CudaInference`]);
//! every other backend, unsupported shapes or dtypes, and `BAGEL_CUBLAS=0` get the inputs
//! back and use burn's ops. The exception is [`attention_packed`], which panics on what it
//! does not take: the model checks [`packed_fits`] (which also reads `BAGEL_PACKED`) first.
//!
//! Library: cudarc loads `libcublas.so` (CUDA 13: `libcublas.so.13`) at the first GEMM, from
//! the loader's search path (`LD_LIBRARY_PATH`; PyTorch's wheels ship it under
//! `site-packages/nvidia/cu13/lib`). A missing library is reported once and the model falls
//! back to burn's ops.
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn::optim::{AdamWState, AdaptiveMomentumState};
use cudarc::cublas::sys as cb;
use cudarc::driver::sys as cu;
use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// GEMMs run through cuBLAS.
static GEMMS: AtomicU64 = AtomicU64::new(0);
/// Wall time (nanoseconds) of this module's work on its stream, host-side from the first
/// launch to the end of the stream wait (the wait for CubeCL's earlier work not counted).
static STREAM_NS: AtomicU64 = AtomicU64::new(0);
/// Parameter updates done by the fused AdamW kernel.
static ADAMW_STEPS: AtomicU64 = AtomicU64::new(0);
/// [`on_stream`] sessions, and the host time (nanoseconds) of their preludes: waiting for
/// CubeCL's queue (`ComputeClient::sync`, host waits only) and the round trip to CubeCL's
/// device thread that looks up the device addresses (and launches the signal kernel).
static SESSIONS: AtomicU64 = AtomicU64::new(0);
static SYNC_NS: AtomicU64 = AtomicU64::new(0);
static LOOKUP_NS: AtomicU64 = AtomicU64::new(0);

/// Counts of this module's work since the process started; the SFT step benchmark reports
/// the difference over its timed steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// cuBLAS GEMMs (linear layers, their gradients, attention's products).
    pub gemms: u64,
    /// Forward passes of the fused attention op.
    pub attention_calls: u64,
    /// Parameter updates by the fused AdamW kernel.
    pub adamw_steps: u64,
    /// Kernels of this module queued on CubeCL's stream: the fused ops, AdamW, and the two
    /// ordering kernels of each session under device-side ordering.
    pub kernel_launches: u64,
    /// Seconds the host spent in [`on_stream`] sessions after the address lookups: queueing
    /// only under device-side ordering; queueing and waiting for completion under host
    /// waits (`BAGEL_CUDA_HOST_WAIT=1`).
    pub seconds: f64,
    /// Ops run ([`on_stream`] sessions; under host waits, two host waits each).
    pub sessions: u64,
    /// Seconds the host waited for CubeCL's queued work to finish before them (host waits
    /// only; 0 under device-side ordering).
    pub sync_seconds: f64,
    /// Seconds spent in the round trips to CubeCL's device thread that look up their
    /// operands' device addresses: that thread first takes everything queued before, so
    /// this includes waiting for it to catch up.
    pub lookup_seconds: f64,
}

/// The totals so far.
pub fn stats() -> Stats {
    Stats {
        gemms: GEMMS.load(Ordering::Relaxed),
        attention_calls: attention::CALLS.load(Ordering::Relaxed),
        adamw_steps: ADAMW_STEPS.load(Ordering::Relaxed),
        kernel_launches: cube::LAUNCHES.load(Ordering::Relaxed),
        seconds: STREAM_NS.load(Ordering::Relaxed) as f64 * 1e-9,
        sessions: SESSIONS.load(Ordering::Relaxed),
        sync_seconds: SYNC_NS.load(Ordering::Relaxed) as f64 * 1e-9,
        lookup_seconds: LOOKUP_NS.load(Ordering::Relaxed) as f64 * 1e-9,
    }
}

/// Kernel arguments for [`Blas::launch`]: a pointer to each (mutable, local) variable, in
/// the kernel's parameter order.
macro_rules! args {
    ($($v:ident),* $(,)?) => { [$(&mut $v as *mut _ as *mut std::ffi::c_void),*] };
}

mod attention;
mod cube;
mod fused;
pub(crate) use attention::{attention, attention_packed, packed_fits};
pub(crate) use fused::{cast, residual_add, rms_norm, rope, stack_rows, swiglu, swiglu_packed, token_logps, SquareSums};

/// The CUDA backend without autodiff: `CubeBackend<CudaRuntime, f32, i32, u8>`.
type Inner = burn::backend::Cuda<f32>;
/// Its float tensor primitive.
type Prim = CubeTensor<CudaRuntime>;

/// Whether the cuBLAS path is on: `BAGEL_CUBLAS` unset or not `0`, and the library loads.
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("BAGEL_CUBLAS").is_ok_and(|v| v == "0") {
            return false;
        }
        let present = unsafe { cb::is_culib_present() };
        if !present {
            tracing::warn!("cuBLAS not found (libcublas.so on LD_LIBRARY_PATH): linear layers use burn's matmul");
        }
        present
    })
}

/// Per-thread CUDA state: the cuBLAS handle, bound to a stream of its own, and the
/// kernels launched in [`on_stream`] sessions (attention's softmax) once compiled.
struct Blas {
    /// The device (ordinal) all of the below belong to.
    device: usize,
    handle: cb::cublasHandle_t,
    stream: cu::CUstream,
    kernels: Option<Kernels>,
    /// Device-side ordering's two u32 counters ([`on_stream`]): a CubeCL buffer holding
    /// their device address (the ordering kernels' only argument, kept alive here) and
    /// that address. [0] counts the signal kernels run on CubeCL's stream (this stream
    /// waits for it to reach the session's number), [1] holds the last session this stream
    /// finished (the spinning kernel on CubeCL's stream waits until it reaches [0]). The
    /// counters are a `cuMemAlloc` allocation of their own (12 bytes per thread, never freed):
    /// stream memory operations refuse CubeCL's pooled (`cuMemAllocAsync`) memory with
    /// `CUDA_ERROR_INVALID_VALUE`. Made at the first session.
    flags: Option<(burn_cubecl::cubecl::server::Handle, u64)>,
    /// Sessions queued so far (the value [0] and [1] reach when each is done).
    seq: u32,
}

/// The kernels launched inside [`on_stream`] sessions ([`attention::SRC`] after
/// [`attention::COMMON`]), compiled by NVRTC at first use on a thread.
struct Kernels {
    /// Attention softmax forward / backward, for bf16 and for f32 operands.
    softmax_fwd: [cu::CUfunction; 2],
    softmax_bwd: [cu::CUfunction; 2],
    /// Its variant from the P the forward pass kept.
    softmax_bwd_p: [cu::CUfunction; 2],
    /// [n, a, b, inner] → [n, b, a, inner] (attention's head/position reorder).
    swap_mid: [cu::CUfunction; 2],
    /// Packed q/k/v projections → RoPE'd q, k and v, and the gradient's way back.
    qkv_split: [cu::CUfunction; 2],
    qkv_merge: [cu::CUfunction; 2],
}

impl Blas {
    /// The compiled kernels (NVRTC on first call, a few hundred ms).
    fn kernels(&mut self) -> &Kernels {
        self.kernels.get_or_insert_with(|| {
            let src = format!("{}\n{}", attention::COMMON, attention::SRC);
            let ptx = cudarc::nvrtc::compile_ptx(src).unwrap_or_else(|e| panic!("NVRTC: bagel kernels: {e:?}"));
            let ptx = std::ffi::CString::new(ptx.to_src()).expect("PTX has no NUL");
            unsafe {
                let module = cudarc::driver::result::module::load_data(ptx.as_ptr() as *const _).expect("load the bagel kernel module");
                let f = |name: &str| cudarc::driver::result::module::get_function(module, std::ffi::CString::new(name).unwrap()).unwrap_or_else(|e| panic!("kernel {name}: {e:?}"));
                Kernels {
                    softmax_fwd: [f("bagel_attn_softmax_fwd_bf16"), f("bagel_attn_softmax_fwd_f32")],
                    softmax_bwd: [f("bagel_attn_softmax_bwd_bf16"), f("bagel_attn_softmax_bwd_f32")],
                    softmax_bwd_p: [f("bagel_attn_softmax_bwd_p_bf16"), f("bagel_attn_softmax_bwd_p_f32")],
                    swap_mid: [f("bagel_swap_mid_bf16"), f("bagel_swap_mid_f32")],
                    qkv_split: [f("bagel_qkv_split_bf16"), f("bagel_qkv_split_f32")],
                    qkv_merge: [f("bagel_qkv_merge_bf16"), f("bagel_qkv_merge_f32")],
                }
            }
        })
    }

    /// Launch `f` on this thread's stream; `args` points at each kernel argument in order
    /// (cuLaunchKernel's convention).
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list and every pointer argument must be a
    /// live device buffer of the size the kernel reads or writes.
    unsafe fn launch(&self, what: &str, f: cu::CUfunction, grid: u32, block: u32, args: &mut [*mut std::ffi::c_void]) {
        check(what, cudarc::driver::result::launch_kernel(f, (grid, 1, 1), (block, 1, 1), 0, self.stream, args));
    }

    /// `C = alpha · op(A) · op(B) + beta · C` for `batch` row-major matrices at explicit
    /// layouts ([`Mat`]: address, leading dimension and batch stride in elements): A
    /// [M, K] ([K, M] when `ta`), B [K, N] ([N, K] when `tb`), C [M, N]; dtypes and
    /// accumulation as [`Blas::gemm`] (`cublasGemmStridedBatchedEx` with the row-major
    /// trick described there). Used for sub-blocks of larger matrices (the causal blocks of
    /// [`attention`]).
    ///
    /// # Safety
    /// Every addressed element must lie in a live device buffer of the stated dtype.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_at(&self, (ab, out): (DType, DType), (ta, tb): (bool, bool), (m, n, k): (usize, usize, usize), batch: usize, (a, b, c): (Mat, Mat, Mat), alpha: f32, beta: f32) {
        let (tab, tc) = (cuda_type(ab), cuda_type(out));
        let (alpha, beta) = (&alpha as *const f32 as *const _, &beta as *const f32 as *const _);
        let (pa, pb, pc) = (a.ptr as *const std::ffi::c_void, b.ptr as *const std::ffi::c_void, c.ptr as *mut std::ffi::c_void);
        #[rustfmt::skip]
        check("GemmStridedBatchedEx", cudarc::cublas::result::gemm_strided_batched_ex(
            self.handle, op(tb), op(ta), dim(n), dim(m), dim(k), alpha,
            pb, tab, dim(b.ld), b.stride as i64,
            pa, tab, dim(a.ld), a.stride as i64,
            beta, pc, tc, dim(c.ld), c.stride as i64,
            dim(batch), COMPUTE, ALGO,
        ));
        GEMMS.fetch_add(1, Ordering::Relaxed);
    }

    /// `C = alpha · op(A) · op(B)` for `batch` row-major matrices packed back to back at
    /// device addresses `a`, `b`, `c`: A [M, K] ([K, M] when `ta`), B [K, N] ([N, K] when
    /// `tb`), C [M, N]. A and B have dtype `ab`, C dtype `out` (bf16 or f32 each), f32
    /// accumulation (`CUBLAS_COMPUTE_32F`, no TF32). Row-major C = op(A)·op(B) is
    /// column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, which is what is asked of cuBLAS (cuBLAS
    /// documentation, "cublasGemmEx"; the usual row-major trick). Queued on this thread's
    /// stream.
    ///
    /// # Safety
    /// The addresses must hold `batch` matrices of the stated shapes and dtypes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(&self, dtypes: (DType, DType), (ta, tb): (bool, bool), (m, n, k): (usize, usize, usize), batch: usize, (a, b, c): (u64, u64, u64), alpha: f32) {
        // The packed layouts: each operand's leading dimension is its stored row length.
        let a = Mat { ptr: a, ld: if ta { m } else { k }, stride: m * k };
        let b = Mat { ptr: b, ld: if tb { k } else { n }, stride: k * n };
        let c = Mat { ptr: c, ld: n, stride: m * n };
        if batch != 1 {
            return unsafe { self.gemm_at(dtypes, (ta, tb), (m, n, k), batch, (a, b, c), alpha, 0.0) };
        }
        let (tab, tc) = (cuda_type(dtypes.0), cuda_type(dtypes.1));
        let beta = 0f32;
        let (alpha, beta) = (&alpha as *const f32 as *const _, &beta as *const f32 as *const _);
        let (pa, pb, pc) = (a.ptr as *const std::ffi::c_void, b.ptr as *const std::ffi::c_void, c.ptr as *mut std::ffi::c_void);
        // cuBLAS's A is our `b` and its B our `a` (Cᵀ = op(b)ᵀ·op(a)ᵀ).
        check("GemmEx", cudarc::cublas::result::gemm_ex(self.handle, op(tb), op(ta), dim(n), dim(m), dim(k), alpha, pb, tab, dim(b.ld), pa, tab, dim(a.ld), beta, pc, tc, dim(c.ld), COMPUTE, ALGO));
        GEMMS.fetch_add(1, Ordering::Relaxed);
    }
}

/// cuBLAS's data type for a GEMM operand dtype (bf16 or f32; others panic).
fn cuda_type(d: DType) -> cb::cudaDataType {
    match d {
        DType::BF16 => cb::cudaDataType::CUDA_R_16BF,
        DType::F32 => cb::cudaDataType::CUDA_R_32F,
        other => panic!("gemm: dtype {other:?} (bf16 or f32 only)"),
    }
}

/// cuBLAS's operation for "transposed" `t`.
fn op(t: bool) -> cb::cublasOperation_t {
    if t {
        cb::cublasOperation_t::CUBLAS_OP_T
    } else {
        cb::cublasOperation_t::CUBLAS_OP_N
    }
}

/// A GEMM dimension as cuBLAS's `int` (panics above `i32::MAX`).
fn dim(x: usize) -> i32 {
    i32::try_from(x).expect("gemm: dimension above i32::MAX")
}

/// f32 accumulation without TF32 (PyTorch's default) and cuBLAS's default algorithm choice.
const COMPUTE: cb::cublasComputeType_t = cb::cublasComputeType_t::CUBLAS_COMPUTE_32F;
const ALGO: cb::cublasGemmAlgo_t = cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;

/// A row-major matrix (or a batch of them) inside a device buffer, for [`Blas::gemm_at`]:
/// the address of its first element, the elements between the starts of two rows as
/// stored (leading dimension) and between two matrices of the batch.
#[derive(Clone, Copy, Debug)]
struct Mat {
    ptr: u64,
    ld: usize,
    stride: usize,
}

thread_local! {
    static BLAS: RefCell<Option<Blas>> = const { RefCell::new(None) };
}

/// Run `f` with this thread's CUDA state for device `index`, made on first use (the
/// device's primary context, as CubeCL uses, made current; a stream; a cuBLAS handle).
/// One device per thread (the trainer's case); another device panics.
fn with_cuda<R>(index: usize, f: impl FnOnce(&mut Blas) -> R) -> R {
    BLAS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let blas = slot.get_or_insert_with(|| unsafe {
            let dev = cudarc::driver::result::device::get(index as i32).expect("CUDA device");
            let ctx = cudarc::driver::result::primary_ctx::retain(dev).expect("CUDA primary context");
            cudarc::driver::result::ctx::set_current(ctx).expect("CUDA context current");
            let stream = cudarc::driver::result::stream::create(cudarc::driver::result::stream::StreamKind::NonBlocking).expect("CUDA stream");
            let handle = cudarc::cublas::result::create_handle().expect("cuBLAS handle");
            check("set stream", cudarc::cublas::result::set_stream(handle, stream as _));
            Blas { device: index, handle, stream, kernels: None, flags: None, seq: 0 }
        });
        assert_eq!(blas.device, index, "cuBLAS/kernel state is per thread and per device: this thread already used device {}", blas.device);
        f(blas)
    })
}

/// Whether [`on_stream`] orders on the device (the default) rather than by host waits
/// (`BAGEL_CUDA_HOST_WAIT=1`).
fn device_ordering() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !std::env::var("BAGEL_CUDA_HOST_WAIT").is_ok_and(|v| v == "1"))
}

/// The ordering protocol of this module (module docs): take the device addresses of
/// `tensors` (in order), run `f` (which queues work on this thread's stream) so that it
/// starts after all the work CubeCL has queued on `tensors`' client and finishes before
/// any work CubeCL queues afterwards. All tensors are on one device; `what` names the
/// work in panics.
///
/// Device-side ordering (default), with the counters of [`Blas::flags`]: a kernel queued
/// on CubeCL's stream increments counter 0 and this stream waits until it reaches the
/// session's number (`cuStreamWaitValue32`); after `f`'s work this stream writes the
/// number into counter 1 (`cuStreamWriteValue32`, which orders the preceding writes
/// before it) and a kernel queued on CubeCL's stream spins until it sees it. The host
/// never waits for the GPU. The signal kernel is launched, and the operands' addresses
/// looked up, in one task run on CubeCL's device thread (`ComputeClient::exclusive`, a
/// blocking round trip that first takes everything queued before it): when it returns,
/// the signal kernel is on the GPU's queue, so no later blocking driver call of this
/// thread can wait for a stream that waits for a kernel still in CubeCL's client-side
/// launch buffer (the hang of the sixth session, bench/RESULTS.md). Buffers stay valid without being held: CubeCL frees and
/// reuses memory in the order of its stream, which is blocked behind the spinning kernel
/// until this stream's work is done.
///
/// Host-side ordering (`BAGEL_CUDA_HOST_WAIT=1`): wait for CubeCL's queue
/// (`ComputeClient::sync`), hold the buffers, run `f`, wait for this stream.
fn on_stream<R>(what: &str, tensors: &[&Prim], f: impl FnOnce(&mut Blas, &[u64]) -> R) -> R {
    let first = tensors.first().expect("on_stream: at least one tensor");
    let client = &first.client;
    let device = device_ordering();
    let t0 = Instant::now();
    if !device {
        check(&format!("sync before {what}"), burn_cubecl::cubecl::future::block_on(client.sync()));
    }
    SYNC_NS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    SESSIONS.fetch_add(1, Ordering::Relaxed);
    with_cuda(first.device.index, |blas| {
        let t1 = Instant::now();
        // Device-side ordering: the signal kernel and the address lookups in one task run on
        // CubeCL's device thread (`ComputeClient::exclusive`; CubeCL's calls made there run
        // inline), so the signal is launched before this thread goes on, for one round trip
        // per session instead of one per tensor. Host waits: one lookup per tensor, the
        // resources held until this stream has drained (they keep the buffers from being
        // reused); under device-side ordering the stream order does that.
        let (flags, held, ptrs) = if device {
            let (handle, addr) = blas.flags.get_or_insert_with(|| {
                let mut addr: cu::CUdeviceptr = 0;
                let zeros = [0u32; 3];
                // SAFETY: a fresh 12-byte allocation, written from a 12-byte host array
                // (a synchronous copy from pageable memory: done when it returns).
                unsafe {
                    check("allocate the ordering counters", cu::cuMemAlloc_v2(&mut addr, 12).result());
                    check("zero the ordering counters", cu::cuMemcpyHtoD_v2(addr, zeros.as_ptr() as *const _, 12).result());
                }
                (client.create_from_slice(&addr.to_le_bytes()), addr)
            });
            let handle = handle.clone();
            let ptrs = client
                .exclusive(|| {
                    // Lookups first: they are where CubeCL orders its stream after operands'
                    // last use on another of its streams, which the signal must follow.
                    let ptrs = tensors.iter().map(|t| client.get_resource(t.handle.clone()).expect("device buffer of a live tensor").resource().ptr).collect::<Vec<u64>>();
                    cube::launch_buffers(client, "bagel_signal", 32, &[handle]);
                    ptrs
                })
                .unwrap_or_else(|e| panic!("CUDA lookups before {what}: {e:?}"));
            (Some(*addr), Vec::new(), ptrs)
        } else {
            let held: Vec<_> = tensors.iter().map(|t| client.get_resource(t.handle.clone()).expect("device buffer of a live tensor")).collect();
            let ptrs = held.iter().map(|r| r.resource().ptr).collect();
            (None, held, ptrs)
        };
        LOOKUP_NS.fetch_add(t1.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let t = Instant::now();
        let r = if let Some(addr) = flags {
            // The number of signals launched so far. The counters heal from an aborted
            // session (a panic between the signal and the spinning kernel): the spinning
            // kernel waits for counter 1 to reach counter 0, the signals actually run.
            blas.seq = blas.seq.wrapping_add(1);
            let seq = blas.seq;
            let geq = cu::CUstreamWaitValue_flags_enum::CU_STREAM_WAIT_VALUE_GEQ as u32;
            check(&format!("wait for CubeCL before {what}"), unsafe { cu::cuStreamWaitValue32_v2(blas.stream, addr, seq, geq).result() });
            let r = f(blas, &ptrs);
            let plain = cu::CUstreamWriteValue_flags_enum::CU_STREAM_WRITE_VALUE_DEFAULT as u32;
            check(&format!("signal CubeCL after {what}"), unsafe { cu::cuStreamWriteValue32_v2(blas.stream, addr + 4, seq, plain).result() });
            let handle = blas.flags.as_ref().expect("made above").0.clone();
            cube::launch_buffers(client, "bagel_wait", 32, &[handle]);
            r
        } else {
            let r = f(blas, &ptrs);
            check(&format!("stream sync after {what}"), unsafe { cudarc::driver::result::stream::synchronize(blas.stream) });
            r
        };
        STREAM_NS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        drop(held);
        r
    })
}

/// Panics with the CUDA/cuBLAS error: a failed GEMM on valid operands is a broken device or
/// driver, which burn's own kernels report the same way.
fn check<E: std::fmt::Debug>(what: &str, r: Result<(), E>) {
    if let Err(e) = r {
        panic!("CUDA {what}: {e:?}");
    }
}

/// A new contiguous tensor of `shape` and `dtype` on `like`'s device (uninitialised).
fn empty(like: &Prim, shape: impl Into<Shape>, dtype: DType) -> Prim {
    let shape: Shape = shape.into();
    let bytes = shape.num_elements() * dtype.size();
    CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), shape, like.client.empty(bytes), dtype)
}

/// `p` as type `T`, which a `TypeId` check ([`kind`]) has said it is.
fn to<T: 'static, P: 'static>(p: P) -> T {
    *(Box::new(p) as Box<dyn Any>).downcast::<T>().ok().expect("type checked by TypeId")
}

/// Which of this crate's CUDA backends `B` is, if any.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `Autodiff<Inner>` (no checkpointing).
    Plain,
    /// `Autodiff<Inner, BalancedCheckpointing>`.
    Balanced,
    /// `Inner`, no autodiff.
    Inference,
}

/// `B`'s [`Kind`] by `TypeId` (by backend, not by primitive: both checkpoint strategies
/// share one primitive type); `None` for every other backend and when the path is off.
fn kind<B: Backend>() -> Option<Kind> {
    use std::any::TypeId;
    let ty = TypeId::of::<B>();
    let k = if ty == TypeId::of::<Autodiff<Inner, NoCheckpointing>>() {
        Kind::Plain
    } else if ty == TypeId::of::<Autodiff<Inner, BalancedCheckpointing>>() {
        Kind::Balanced
    } else if ty == TypeId::of::<Inner>() {
        Kind::Inference
    } else {
        return None;
    };
    enabled().then_some(k)
}

/// `op(a) · op(b)` for tensors of rank ≥ 2 on one CUDA device: the last two dimensions are
/// the matrices, the leading ones (equal in `a` and `b`) a batch. `op(a)` = `aᵀ` when `ta`
/// (so a matrix of a is stored [K, M], else [M, K]) and likewise `b` with `tb` (stored
/// [N, K], else [K, N]). Returns [..., M, N] in the operands' dtype (bf16 or f32; both the
/// same), through `cublasGemmEx` (one matrix) or `cublasGemmStridedBatchedEx`
/// ([`Blas::gemm`]).
pub(crate) fn gemm(a: Prim, b: Prim, ta: bool, tb: bool) -> Prim {
    gemms(vec![(a, b, ta, tb)]).pop().expect("one product")
}

/// Several [`gemm`]s (operands and flags each) queued in one [`on_stream`] session: one
/// ordering of the session for all of them (a linear layer's two backward products).
fn gemms(products: Vec<(Prim, Prim, bool, bool)>) -> Vec<Prim> {
    struct Planned {
        a: Prim,
        b: Prim,
        c: Prim,
        flags: (bool, bool),
        mnk: (usize, usize, usize),
        batch: usize,
    }
    let plans: Vec<Planned> = products
        .into_iter()
        .map(|(a, b, ta, tb)| {
            let a = burn_cubecl::kernel::into_contiguous(a);
            let b = burn_cubecl::kernel::into_contiguous(b);
            let (sa, sb) = (a.shape(), b.shape());
            let r = sa.len();
            assert!(r >= 2 && sb.len() == r && sa[..r - 2] == sb[..r - 2], "gemm: operands {:?} and {:?} (same rank ≥ 2, same batch dims)", &sa[..], &sb[..]);
            let batch: usize = sa[..r - 2].iter().product();
            let (m, k) = if ta { (sa[r - 1], sa[r - 2]) } else { (sa[r - 2], sa[r - 1]) };
            let (kb, n) = if tb { (sb[r - 1], sb[r - 2]) } else { (sb[r - 2], sb[r - 1]) };
            assert_eq!(k, kb, "gemm: inner dimensions differ ({:?}{} · {:?}{})", &sa[..], if ta { "ᵀ" } else { "" }, &sb[..], if tb { "ᵀ" } else { "" });
            assert_eq!(a.dtype, b.dtype, "gemm: operand dtypes differ");
            assert!(matches!(a.dtype, DType::BF16 | DType::F32), "gemm: dtype {:?} (bf16 or f32 only)", a.dtype);
            let mut shape: Vec<usize> = sa[..r - 2].to_vec();
            shape.extend([m, n]);
            let c = empty(&a, shape, a.dtype);
            Planned { a, b, c, flags: (ta, tb), mnk: (m, n, k), batch }
        })
        .collect();
    // cuBLAS wants leading dimensions ≥ 1: empty products stay uninitialised (no elements).
    let live: Vec<&Planned> = plans.iter().filter(|p| p.batch > 0 && p.mnk.0 > 0 && p.mnk.1 > 0).collect();
    if !live.is_empty() {
        let tensors: Vec<&Prim> = live.iter().flat_map(|p| [&p.a, &p.b, &p.c]).collect();
        on_stream("GEMM", &tensors, |blas, ptr| {
            for (p, abc) in live.iter().zip(ptr.chunks(3)) {
                let (m, n, k) = p.mnk;
                // SAFETY: the three addresses are the contiguous operands and output planned
                // above, alive until the session's work is done (`on_stream`: CubeCL's
                // stream, which frees and reuses memory, waits for it).
                unsafe { blas.gemm((p.a.dtype, p.a.dtype), p.flags, (m, n, k), p.batch, (abc[0], abc[1], abc[2]), 1.0) };
            }
        });
    }
    plans.into_iter().map(|p| p.c).collect()
}

/// Autodiff node of `c = op(a) · op(b)` ([`gemm`]'s flags); state = the checkpointed a and b.
#[derive(Debug)]
struct Gemm {
    ta: bool,
    tb: bool,
}

impl Backward<Inner, 2> for Gemm {
    type State = (Option<NodeId>, Option<NodeId>);

    /// With dc the gradient of c: d op(a) = dc · op(b)ᵀ and d op(b) = op(a)ᵀ · dc, so
    /// da = dc · op(b)ᵀ (or its transpose op(b) · dcᵀ when `ta`) and db = op(a)ᵀ · dc (or
    /// dcᵀ · op(a) when `tb`), each a GEMM with flags and no transposed copies, both in one
    /// [`gemms`] session.
    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let Gemm { ta, tb } = self;
        let (a, b) = ops.state;
        let a: Option<Prim> = a.map(|a| checkpointer.retrieve_node_output(a));
        let b: Option<Prim> = b.map(|b| checkpointer.retrieve_node_output(b));
        let dc = grads.consume::<Inner>(&ops.node);
        let [pa, pb] = ops.parents;
        let mut products = Vec::new();
        if pa.is_some() {
            let b = b.expect("b kept for da");
            products.push(if ta { (b, dc.clone(), tb, true) } else { (dc.clone(), b, false, !tb) });
        }
        if pb.is_some() {
            let a = a.expect("a kept for db");
            products.push(if tb { (dc, a, true, ta) } else { (a, dc, !ta, false) });
        }
        let mut out = gemms(products).into_iter();
        for node in [pa, pb].into_iter().flatten() {
            grads.register::<Inner>(node.id, out.next().expect("one gradient per tracked operand"));
        }
    }
}

/// `op(a) · op(b)` under autodiff with checkpoint strategy `C`.
fn gemm_autodiff<C: CheckpointStrategy>(a: FloatTensor<Autodiff<Inner, C>>, b: FloatTensor<Autodiff<Inner, C>>, ta: bool, tb: bool) -> FloatTensor<Autodiff<Inner, C>> {
    let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
    match (Gemm { ta, tb }).prepare::<C>([a.node.clone(), b.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            // da needs b, db needs a.
            let a_state = b_tracked.then(|| prep.checkpoint(&a));
            let b_state = a_tracked.then(|| prep.checkpoint(&b));
            prep.finish((a_state, b_state), gemm(a.primitive, b.primitive, ta, tb))
        }
        OpsKind::UnTracked(prep) => prep.finish(gemm(a.primitive, b.primitive, ta, tb)),
    }
}

/// `op(a) · op(b)` ([`gemm`]'s shapes and flags) through cuBLAS when `B` is one of this
/// crate's CUDA backends and the path is on (module docs); `Err` with the operands handed
/// back for burn's matmul otherwise.
pub(crate) fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, ta: bool, tb: bool) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    // What `gemm` takes: same batch dims (no broadcasting), bf16 or f32 alike, no empty
    // dimension (cuBLAS wants leading dimensions ≥ 1). Anything else goes to burn.
    let (sa, sb) = (a.dims(), b.dims());
    let inner = |s: &[usize; D], t: bool| if t { s[D - 2] } else { s[D - 1] };
    let fits = D >= 2
        && sa[..D - 2] == sb[..D - 2]
        && inner(&sa, ta) == if tb { sb[D - 1] } else { sb[D - 2] }
        && sa.iter().chain(&sb).all(|&d| d > 0)
        && a.dtype() == b.dtype()
        && matches!(a.dtype(), DType::BF16 | DType::F32);
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err((a, b));
    };
    let (TensorPrimitive::Float(ap), TensorPrimitive::Float(bp)) = (a.into_primitive(), b.into_primitive()) else {
        unreachable!("float tensors have float primitives")
    };
    let c: FloatTensor<B> = match kind {
        Kind::Plain => to(gemm_autodiff::<NoCheckpointing>(to(ap), to(bp), ta, tb)),
        Kind::Balanced => to(gemm_autodiff::<BalancedCheckpointing>(to(ap), to(bp), ta, tb)),
        Kind::Inference => to(gemm(to(ap), to(bp), ta, tb)),
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(c)))
}

/// The fused AdamW step (CUDA C, compiled by NVRTC at first use): one pass reads p, g, m,
/// v and writes p, m, v, in the order of burn's `AdamW` (burn-optim 0.21 `adamw.rs`):
/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p·(1 − lr·λ) − lr · (m/bc₁) / (√(v/bc₂) + ε),
/// with bcᵢ = 1 − βᵢᵗ; `first` = no moments yet (taken as 0).
const ADAMW_SRC: &str = r#"
/* Device-side ordering (on_stream), on the counters c of Blas::flags, whose address is
   prm's two words. bagel_signal: c[0] += 1 (the private stream waits for it to reach the
   session's number). bagel_wait: spin until c[1], written by the private stream when a
   session's work is done, has reached c[0] (the number of the last signal run on this
   stream, i.e. of the session being waited for; wrapping compare). One thread each, in
   stream order. */
__device__ __forceinline__ volatile unsigned* bagel_counters(const unsigned* prm) {
  return (volatile unsigned*)(((unsigned long long)prm[1] << 32) | prm[0]);
}
extern "C" __global__ void bagel_signal(const unsigned* __restrict__ prm) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    volatile unsigned* c = bagel_counters(prm);
    __threadfence_system();
    c[0] = c[0] + 1u;
  }
}
extern "C" __global__ void bagel_wait(const unsigned* __restrict__ prm) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    volatile unsigned* c = bagel_counters(prm);
    const unsigned want = c[0];
    while ((int)(c[1] - want) < 0) __nanosleep(256);
    __threadfence();
  }
}
template <bool SCALED>
__device__ void bagel_adamw_impl(float* __restrict__ p_out, float* __restrict__ m_out, float* __restrict__ v_out,
    const float* __restrict__ p, const float* __restrict__ g, const float* __restrict__ m, const float* __restrict__ v,
    const float* __restrict__ gs, const unsigned* __restrict__ prm) {
  const unsigned long long n = (unsigned long long)prm[0] | ((unsigned long long)prm[1] << 32);
  const int first = (int)prm[2];
  const float lr = __uint_as_float(prm[3]), b1 = __uint_as_float(prm[4]), b2 = __uint_as_float(prm[5]), eps = __uint_as_float(prm[6]);
  const float decay = __uint_as_float(prm[7]), bc1 = __uint_as_float(prm[8]), bc2 = __uint_as_float(prm[9]);
  const float scale = SCALED ? gs[0] : 1.0f;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)blockDim.x * gridDim.x) {
    float gi = SCALED ? g[i] * scale : g[i];
    float mi = (first ? 0.0f : m[i] * b1) + gi * (1.0f - b1);
    float vi = (first ? 0.0f : v[i] * b2) + (gi * gi) * (1.0f - b2);
    m_out[i] = mi;
    v_out[i] = vi;
    p_out[i] = p[i] * decay - ((mi / bc1) / (sqrtf(vi / bc2) + eps)) * lr;
  }
}
extern "C" __global__ void bagel_adamw(float* p_out, float* m_out, float* v_out, const float* p, const float* g,
    const float* m, const float* v, const unsigned* prm) { bagel_adamw_impl<false>(p_out, m_out, v_out, p, g, m, v, 0, prm); }
/* The gradient times gs[0] (gradient clipping's coefficient, on the device). */
extern "C" __global__ void bagel_adamw_scaled(float* p_out, float* m_out, float* v_out, const float* p, const float* g,
    const float* m, const float* v, const float* gs, const unsigned* prm) { bagel_adamw_impl<true>(p_out, m_out, v_out, p, g, m, v, gs, prm); }
"#;

/// One AdamW step ([`crate::optim::FusedAdamW`]) on one parameter as the fused kernel, the
/// gradient multiplied by `scale` [1] (f32, on the device) when given, when `B` is this
/// crate's inner CUDA backend, the path is on (`BAGEL_CUBLAS` as for the GEMMs), and
/// parameter, gradient, moments and scale are f32 with no AMSGrad maximum; `Err` with the
/// arguments handed back for burn's `AdamW` otherwise (the scale is the caller's to apply).
#[allow(clippy::type_complexity)]
pub(crate) fn adamw_step<B: Backend, const D: usize>(
    opt: &crate::optim::FusedAdamW,
    lr: f64,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<AdamWState<B, D>>,
    scale: Option<Tensor<B, 1>>,
) -> Result<(Tensor<B, D>, Option<AdamWState<B, D>>), (Tensor<B, D>, Tensor<B, D>, Option<AdamWState<B, D>>)> {
    let f32s = tensor.dtype() == DType::F32
        && grad.dtype() == DType::F32
        && scale.as_ref().is_none_or(|s| s.dtype() == DType::F32)
        && state.as_ref().is_none_or(|s| s.momentum.max_moment_2.is_none() && s.momentum.moment_1.dtype() == DType::F32 && s.momentum.moment_2.dtype() == DType::F32);
    if kind::<B>() != Some(Kind::Inference) || !f32s {
        return Err((tensor, grad, state));
    }
    let prim = |t: Tensor<B, D>| -> Prim { burn_cubecl::kernel::into_contiguous(to(t.into_primitive().tensor())) };
    let back = |p: Prim| -> Tensor<B, D> { Tensor::from_primitive(TensorPrimitive::Float(to::<FloatTensor<B>, _>(p))) };
    let shape = tensor.shape();
    let (p, g) = (prim(tensor), prim(grad));
    let (time, moments) = match state {
        Some(s) => (s.momentum.time + 1, Some((prim(s.momentum.moment_1), prim(s.momentum.moment_2)))),
        None => (1, None),
    };
    let n = shape.num_elements();
    let new = || empty(&p, shape.clone(), DType::F32);
    let (p_out, m_out, v_out) = (new(), new(), new());
    if n > 0 {
        // Without moments yet (`first`), p stands in for them: the kernel does not read them.
        let (m, v) = moments.as_ref().map_or((&p, &p), |(m, v)| (m, v));
        let decay_rate = lr * opt.weight_decay as f64;
        let bc = |beta: f32| 1f32 - beta.powi(time as i32);
        let [lo, hi] = cube::words(n);
        let f = |x: f32| x.to_bits();
        #[rustfmt::skip]
        let params = [lo, hi, moments.is_none() as u32, f(lr as f32), f(opt.beta_1), f(opt.beta_2), f(opt.epsilon), f((1.0 - decay_rate) as f32), f(bc(opt.beta_1)), f(bc(opt.beta_2))];
        let grid = (n.div_ceil(256).min(1 << 16) as u32, 1);
        match scale {
            Some(s) => {
                let s: Prim = burn_cubecl::kernel::into_contiguous(to(s.into_primitive().tensor()));
                cube::launch("bagel_adamw_scaled", grid, 256, &[&p_out, &m_out, &v_out, &p, &g, m, v, &s], &params);
            }
            None => cube::launch("bagel_adamw", grid, 256, &[&p_out, &m_out, &v_out, &p, &g, m, v], &params),
        }
        ADAMW_STEPS.fetch_add(1, Ordering::Relaxed);
    }
    let momentum = AdaptiveMomentumState { time, moment_1: back(m_out), moment_2: back(v_out), max_moment_2: None };
    Ok((back(p_out), Some(AdamWState { momentum })))
}

#[cfg(test)]
mod tests {
    //! Needs an NVIDIA GPU and libcublas: build with
    //! `cargo test --release -p bagel-train --features cuda --no-run --target-dir target/cuda`,
    //! run the test binary on the GPU machine (`<binary> cuda_ops --nocapture`, with
    //! libcublas.so on `LD_LIBRARY_PATH`). Without a device the test says so and passes.
    use super::*;
    use burn::tensor::{FloatDType, TensorData};

    type Ad = Autodiff<Inner>;

    /// `n` pseudo-random values, roughly uniform on [−1, 1) (xorshift64*; fixed seed per call
    /// site, so a failure reproduces).
    pub(super) fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    /// Round to bf16 and back (what the GEMM's operands hold under `--bf16`).
    pub(super) fn bf16(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
    }

    /// op(a) · op(b) in f64 for row-major `a`, `b` (shapes as in [`gemm`]).
    fn gemm_f64(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[if ta { p * m + i } else { i * k + p }] as f64 * b[if tb { j * k + p } else { p * n + j }] as f64).sum();
            }
        }
        c
    }

    /// ‖x − r‖₂ / ‖r‖₂ (METHOD.md's measure; NaN fails every bound).
    pub(super) fn rel(x: &[f32], r: &[f64]) -> f64 {
        assert_eq!(x.len(), r.len());
        let num: f64 = x.iter().zip(r).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
        (num / r.iter().map(|b| b * b).sum::<f64>()).sqrt()
    }

    /// `v` widened to f64 (a reference given in f32).
    pub(super) fn wide(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// [`rel`] of a tensor's values (cast to f32) against `reference`.
    fn rel_err<B2: Backend>(out: Tensor<B2, 2>, reference: &[f64]) -> f64 {
        rel(&out.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap(), reference)
    }

    /// CUDA device 0 when this machine has one and libcublas loads; `None` (after saying
    /// the test is skipped) otherwise.
    pub(super) fn gpu() -> Option<burn::backend::cuda::CudaDevice> {
        if !enabled() || cudarc::driver::CudaContext::device_count().unwrap_or(0) == 0 {
            eprintln!("skipped: no CUDA device or no libcublas on this machine");
            return None;
        }
        Some(burn::backend::cuda::CudaDevice::new(0))
    }

    /// The fused AdamW kernel against burn's `AdamW` (the unfused reference it replaces),
    /// three steps on one parameter with weight decay, the last two with a gradient scale
    /// (the scaled kernel against burn on the scaled gradient): parameters and both moments within
    /// 1e-5 relative (f32 arithmetic; the kernel keeps burn's operation order, so the
    /// differences are the compiler's contractions, ≈ 1e-7).
    #[test]
    fn fused_adamw_matches_burns_adamw() {
        use burn::optim::{AdamWConfig, SimpleOptimizer};
        let Some(device) = gpu() else { return };
        let fused = crate::optim::FusedAdamW::new(0.9, 0.95, 1e-8, 0.1);
        let reference = AdamWConfig::new().with_beta_1(0.9).with_beta_2(0.95).with_epsilon(1e-8).with_weight_decay(0.1).build();
        let t = |seed: u64| Tensor::<Inner, 2>::from_data(TensorData::new(random(64 * 48, seed), [64, 48]), &device);
        let (mut pf, mut sf) = (t(11), None);
        let (mut pr, mut sr) = (t(11), None);
        let before = ADAMW_STEPS.load(Ordering::Relaxed);
        for step in 0..3u64 {
            let g = t(20 + step);
            // Steps 1 and 2 with a gradient scale (clipping's coefficient): the scaled
            // kernel against burn's AdamW on g·0.37.
            let k = if step == 0 { 1.0 } else { 0.37 };
            if step == 1 {
                fused.grad_scale.set(Tensor::<Inner, 1>::from_data(TensorData::new(vec![0.37f32], [1]), &device));
            }
            (pf, sf) = SimpleOptimizer::<Inner>::step(&fused, 1e-2, pf, g.clone(), sf);
            (pr, sr) = reference.step(1e-2, pr, g.mul_scalar(k), sr);
        }
        assert_eq!(ADAMW_STEPS.load(Ordering::Relaxed) - before, 3, "the fused kernel ran each step");
        let (sf, sr) = (sf.unwrap().momentum, sr.unwrap().momentum);
        assert_eq!((sf.time, sr.time), (3, 3));
        let rel = |a: Tensor<Inner, 2>, b: Tensor<Inner, 2>| rel_err(a, &wide(&b.into_data().to_vec::<f32>().unwrap()));
        let errs = [rel(pf, pr), rel(sf.moment_1, sr.moment_1), rel(sf.moment_2, sr.moment_2)];
        eprintln!("fused AdamW vs burn: ‖err‖/‖ref‖ p {:.1e}, m {:.1e}, v {:.1e}", errs[0], errs[1], errs[2]);
        assert!(errs.iter().all(|&e| e < 1e-5), "{errs:?}");
    }

    /// The f64 reference itself, against burn's CPU backend (f32) on all four transpose
    /// cases: runs anywhere the `cuda` feature's tests are built.
    #[test]
    fn f64_reference_matches_ndarray() {
        type Cpu = burn::backend::NdArray<f32>;
        let (m, k, n) = (7, 5, 3);
        let dev = Default::default();
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (a, b) = (random(m * k, 6), random(k * n, 7));
            let at = Tensor::<Cpu, 2>::from_data(TensorData::new(a.clone(), if ta { [k, m] } else { [m, k] }), &dev);
            let bt = Tensor::<Cpu, 2>::from_data(TensorData::new(b.clone(), if tb { [n, k] } else { [k, n] }), &dev);
            let c = (if ta { at.transpose() } else { at }).matmul(if tb { bt.transpose() } else { bt });
            let e = rel_err(c, &gemm_f64(&a, &b, m, k, n, ta, tb));
            assert!(e < 1e-6, "ta={ta} tb={tb}: {e}");
        }
    }

    /// cuBLAS forward and both gradients against an f64 reference on the CPU, with burn's
    /// matmul measured the same way for comparison. Bounds (METHOD.md): f32 arithmetic
    /// 1e-5 (seen ≈ 1e-7); bf16 1e-2 (each output rounded to bf16, 2⁻⁹ relative). The
    /// reference takes the operands as the GEMM sees them (rounded to bf16 under bf16).
    #[test]
    fn cublas_linear_matches_f64_reference() {
        let Some(device) = gpu() else { return };
        let (m, k, n) = (256, 192, 320);
        let (x, w, up) = (random(m * k, 1), random(n * k, 2), random(m * n, 3));
        let upload = |v: &[f32], r: usize, c: usize| Tensor::<Ad, 2>::from_data(TensorData::new(v.to_vec(), [r, c]), &device);
        for (dtype, tol) in [(FloatDType::F32, 1e-5), (FloatDType::BF16, 1e-2)] {
            let seen = |v: &[f32]| if dtype == FloatDType::BF16 { bf16(v) } else { v.to_vec() };
            let (xs, ws, ups) = (seen(&x), seen(&w), seen(&up));
            let y_ref = gemm_f64(&xs, &ws, m, k, n, false, true);
            let dx_ref = gemm_f64(&ups, &ws, m, n, k, false, false);
            let dw_ref = gemm_f64(&ups, &xs, n, m, k, true, false);
            let run = |fast: bool| {
                let xt = upload(&x, m, k).require_grad();
                let wt = upload(&w, n, k).require_grad();
                let (xl, wl) = (xt.clone().cast(dtype), wt.clone().cast(dtype));
                let y = if fast { matmul(xl, wl, false, true).ok().expect("cuBLAS path taken") } else { xl.matmul(wl.transpose()) };
                let loss = (y.clone().cast(FloatDType::F32) * upload(&up, m, n)).sum();
                let g = loss.backward();
                let e = [rel_err(y.inner(), &y_ref), rel_err(xt.grad(&g).unwrap(), &dx_ref), rel_err(wt.grad(&g).unwrap(), &dw_ref)];
                eprintln!("{dtype:?} {}: ‖err‖/‖ref‖ y {:.1e}, dx {:.1e}, dW {:.1e}", if fast { "cuBLAS" } else { "burn matmul" }, e[0], e[1], e[2]);
                e
            };
            let burn = run(false);
            let fast = run(true);
            assert!(fast.iter().all(|&e| e < tol), "{dtype:?}: cuBLAS {fast:?} above {tol} (burn: {burn:?})");
        }
        // Batched [2, 3] matrices, every transpose case, f32: forward against f64, both
        // gradients against burn's own autodiff of the same product (an independent
        // derivation; burn's matmul is TF32, hence 1e-3).
        let (bt, (m, k, n)) = (6usize, (40usize, 24usize, 56usize));
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (ad, bd) = (if ta { [2, 3, k, m] } else { [2, 3, m, k] }, if tb { [2, 3, n, k] } else { [2, 3, k, n] });
            let (av, bv, upv) = (random(bt * m * k, 8), random(bt * k * n, 9), random(bt * m * n, 10));
            let t4 = |v: &[f32], d: [usize; 4]| Tensor::<Ad, 4>::from_data(TensorData::new(v.to_vec(), d), &device);
            let run = |fast: bool| {
                let (a, b) = (t4(&av, ad).require_grad(), t4(&bv, bd).require_grad());
                let c = if fast {
                    matmul(a.clone(), b.clone(), ta, tb).ok().expect("cuBLAS path taken")
                } else {
                    let oa = if ta { a.clone().swap_dims(2, 3) } else { a.clone() };
                    let ob = if tb { b.clone().swap_dims(2, 3) } else { b.clone() };
                    oa.matmul(ob)
                };
                let g = (c.clone() * t4(&upv, [2, 3, m, n])).sum().backward();
                let flat = |t: Tensor<Inner, 4>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
                (flat(c.inner()), flat(a.grad(&g).unwrap()), flat(b.grad(&g).unwrap()))
            };
            let (c1, da1, db1) = run(true);
            let (_, da0, db0) = run(false);
            let c_ref: Vec<f64> = (0..bt).flat_map(|i| gemm_f64(&av[i * m * k..(i + 1) * m * k], &bv[i * k * n..(i + 1) * k * n], m, k, n, ta, tb)).collect();
            let ec = rel(&c1, &c_ref);
            let (ea, eb) = (rel(&da1, &wide(&da0)), rel(&db1, &wide(&db0)));
            eprintln!("batched ta={ta} tb={tb}: c vs f64 {ec:.1e}, da vs burn {ea:.1e}, db vs burn {eb:.1e}");
            assert!(ec < 1e-5 && ea < 1e-3 && eb < 1e-3, "batched ta={ta} tb={tb}: {ec} {ea} {eb}");
        }
        let (m, k, n) = (256, 192, 320);
        // Transposed operand, inference backend: aᵀ · b for a [K, M], b [K, N].
        let (a, b) = (random(k * m, 4), random(k * n, 5));
        let t = |v: &[f32], r: usize, c: usize| Tensor::<Inner, 2>::from_data(TensorData::new(v.to_vec(), [r, c]), &device).into_primitive().tensor();
        let c = Tensor::<Inner, 2>::from_primitive(TensorPrimitive::Float(gemm(t(&a, k, m), t(&b, k, n), true, false)));
        let e = rel_err(c, &gemm_f64(&a, &b, m, k, n, true, false));
        eprintln!("F32 aᵀ·b: {e:.1e}");
        assert!(e < 1e-5, "aᵀ·b: {e}");
    }

    /// Deterministic parameters by HF name (the same on every backend): matrices
    /// 0.05·U(−1, 1), norm weights 1 + 0.1·U(−1, 1), seeded by the name.
    struct Seeded;

    impl Seeded {
        fn values(name: &str, n: usize) -> Vec<f32> {
            random(n, name.bytes().fold(1469598103934665603u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211)))
        }
    }

    impl<B2: Backend> crate::model::TensorSource<B2> for (Seeded, B2::Device) {
        fn matrix(&mut self, name: &str, shape: [usize; 2]) -> crate::error::Result<Tensor<B2, 2>> {
            let v: Vec<f32> = Seeded::values(name, shape[0] * shape[1]).iter().map(|x| 0.05 * x).collect();
            Ok(Tensor::from_data(TensorData::new(v, shape), &self.1))
        }
        fn vector(&mut self, name: &str, len: usize) -> crate::error::Result<Tensor<B2, 1>> {
            let v: Vec<f32> = Seeded::values(name, len).iter().map(|x| 1.0 + 0.1 * x).collect();
            Ok(Tensor::from_data(TensorData::new(v, [len]), &self.1))
        }
        fn has(&self, _name: &str) -> bool {
            false
        }
    }

    /// The whole model on the GPU (packed projections, fused ops, cuBLAS; f32 and bf16
    /// mixed precision) against the same model on burn's CPU backend (composed burn ops,
    /// f32): summed loss and the gradients of every parameter of the first layer and of the
    /// embedding. 2 layers, hidden 64, 4 query heads on 2 KV heads (hd 16), SwiGLU 96,
    /// vocab 50, batch 2 × 130 positions (2 causal blocks), a loss mask that drops the
    /// first 10 positions. Bounds (METHOD.md): f32 1e-4 (f32 arithmetic in different
    /// orders through two layers); bf16 5e-2 (activations and gradients rounded to bf16,
    /// 2⁻⁹ relative each, through two layers and back: a layout error gives O(1)).
    #[test]
    fn packed_model_matches_cpu_model() {
        let Some(gpu) = gpu() else { return };
        type Cpu = Autodiff<burn::backend::NdArray<f32>>;
        let config: crate::config::LlamaConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": false, "max_position_embeddings": 256
        }))
        .expect("config");
        let (b, s) = (2, 130);
        let ids: Vec<i32> = random(b * (s + 1), 81).iter().map(|v| ((v + 1.0) * 25.0) as i32 % 50).collect();
        let (tok, tgt): (Vec<i32>, Vec<i32>) = (0..b).flat_map(|r| (0..s).map(move |j| (r, j))).map(|(r, j)| (ids[r * (s + 1) + j], ids[r * (s + 1) + j + 1])).unzip();
        let mask: Vec<f32> = (0..b * s).map(|i| if i % s < 10 { 0.0 } else { 1.0 }).collect();
        /// Summed loss and the flattened gradients of the checked parameters.
        fn run<B2: burn::tensor::backend::AutodiffBackend>(config: &crate::config::LlamaConfig, device: B2::Device, bf16: bool, (tok, tgt, mask): (&[i32], &[i32], &[f32]), (b, s): (usize, usize)) -> (f64, Vec<(&'static str, Vec<f32>)>) {
            let model = crate::model::Llama::<B2>::from_source(config, &mut (Seeded, device.clone())).expect("model").with_bf16(bf16);
            let ints = |v: &[i32]| Tensor::<B2, 2, burn::tensor::Int>::from_data(TensorData::new(v.to_vec(), [b, s]), &device);
            let loss = model.loss_sum(ints(tok), ints(tgt), Tensor::from_data(TensorData::new(mask.to_vec(), [b, s]), &device));
            let value = loss.clone().into_data().to_vec::<f32>().unwrap()[0] as f64;
            let g = loss.backward();
            let l = &model.layers[0];
            let flat = |t: Tensor<B2, 2>| -> Vec<f32> { t.grad(&g).expect("gradient").cast(FloatDType::F32).into_data().to_vec().unwrap() };
            let flat1 = |t: Tensor<B2, 1>| -> Vec<f32> { t.grad(&g).expect("gradient").cast(FloatDType::F32).into_data().to_vec().unwrap() };
            let grads = vec![
                ("q", flat(l.q.val())),
                ("k", flat(l.k.val())),
                ("v", flat(l.v.val())),
                ("o", flat(l.o.val())),
                ("gate", flat(l.gate.val())),
                ("up", flat(l.up.val())),
                ("down", flat(l.down.val())),
                ("attn_norm", flat1(l.attn_norm.val())),
                ("mlp_norm", flat1(l.mlp_norm.val())),
                ("embed", flat(model.embed.val())),
            ];
            (value, grads)
        }
        let data = (&tok[..], &tgt[..], &mask[..]);
        let (loss_ref, grads_ref) = run::<Cpu>(&config, Default::default(), false, data, (b, s));
        for (bf16, tol) in [(false, 1e-4), (true, 5e-2)] {
            let dt = if bf16 { DType::BF16 } else { DType::F32 };
            assert!(packed_fits::<Ad>([b, s, (4 + 2 * 2) * 16], dt, 4, 2), "the model takes the packed path");
            let (loss, grads) = run::<Ad>(&config, gpu.clone(), bf16, data, (b, s));
            let mut errs = vec![("loss", ((loss - loss_ref) / loss_ref).abs())];
            errs.extend(grads.iter().zip(&grads_ref).map(|((n, x), (_, r))| (*n, rel(x, &wide(r)))));
            let line: Vec<String> = errs.iter().map(|(n, e)| format!("{n} {e:.1e}")).collect();
            eprintln!("model on the GPU (bf16 {bf16}) vs CPU: loss {loss:.6} vs {loss_ref:.6}; {}", line.join(", "));
            assert!(errs.iter().all(|(_, e)| *e < tol), "bf16 {bf16}: {errs:?} above {tol}");
        }
    }

}
