//! cuBLAS GEMMs and a fused AdamW kernel on the CUDA backend (issue 7, "custom burn ops
//! that call NVIDIA's libraries through cudarc").
//!
//! burn 0.21's CUDA matmul kernels (CubeCL) reach about 60 TFLOP/s in bf16 on an H200, a
//! tenth of the tensor-core rate (bench/RESULTS.md, "where the step goes"). This module
//! runs the model's matrix products through cuBLAS on burn's own device buffers: the
//! linear layers, `y = x · Wᵀ` for x [M, K] and W [N, K], with their two backward GEMMs
//! (`dx = dy · W` [M, K], `dW = dyᵀ · x` [N, K]), and attention's batched products
//! (`q · kᵀ`, `p · v` over [B, H] matrices). `cublasGemmEx` /
//! `cublasGemmStridedBatchedEx`: bf16 or f32 operands, f32 accumulation
//! (`CUBLAS_COMPUTE_32F`, no TF32, as PyTorch's default), output in the operands' dtype.
//!
//! Ordering: CubeCL launches on its own non-blocking streams, which cuBLAS cannot see
//! through burn 0.21's API. A GEMM therefore waits for the client's queued work
//! (`ComputeClient::sync`), runs on a stream of its own, and waits for that stream before
//! it returns, so every kernel CubeCL queues afterwards sees the result. That is two host
//! waits per GEMM (three GEMMs per linear layer per step); the profile in
//! bench/RESULTS.md says what they cost. `ComputeClient::sync` waits for the calling
//! thread's CubeCL stream only: operands must come from this thread (the trainer runs
//! its model on one thread).
//!
//! Dispatch: [`matmul`] is called from the backend-generic model code. It checks the
//! backend's tensor type at run time (`Any` downcasts of the primitives) and takes the
//! cuBLAS path only for the CUDA backends of this crate ([`crate::CudaBackend`],
//! [`crate::CudaBackendCheckpointed`], [`crate::CudaInference`]); every other backend, and
//! `BAGEL_CUBLAS=0`, keeps burn's matmul.
//!
//! Also here: the fused AdamW kernel of [`crate::optim::FusedAdamW`] ([`adamw_step`]),
//! CUDA C compiled by NVRTC at first use and launched the same way (after a sync, on this
//! module's stream, waited for). `BAGEL_CUBLAS=0` turns it off with the GEMMs.
//!
//! Library: cudarc loads `libcublas.so` (CUDA 13: `libcublas.so.13`) at the first GEMM, from
//! the loader's search path (`LD_LIBRARY_PATH`; PyTorch's wheels ship it under
//! `site-packages/nvidia/cu13/lib`). A missing library is reported once and the model falls
//! back to burn's matmul.
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops, OpsKind};
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

/// GEMMs run through cuBLAS and their wall time (nanoseconds), host-side from the launch to
/// the end of the stream wait (the wait for CubeCL's earlier work is not counted).
static GEMMS: AtomicU64 = AtomicU64::new(0);
static GEMM_NS: AtomicU64 = AtomicU64::new(0);
/// Parameter updates done by the fused AdamW kernel.
static ADAMW_STEPS: AtomicU64 = AtomicU64::new(0);

/// Totals since the process started: (GEMMs run, seconds spent in them). The SFT step
/// benchmark reports the difference over its timed steps.
pub fn gemm_stats() -> (u64, f64) {
    (GEMMS.load(Ordering::Relaxed), GEMM_NS.load(Ordering::Relaxed) as f64 * 1e-9)
}

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

/// Per-thread CUDA state: the cuBLAS handle, bound to a stream of its own, and the fused
/// AdamW kernel once compiled.
struct Blas {
    /// The device (ordinal) all of the below belong to.
    device: usize,
    handle: cb::cublasHandle_t,
    stream: cu::CUstream,
    adamw: Option<cu::CUfunction>,
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
            Blas { device: index, handle, stream, adamw: None }
        });
        assert_eq!(blas.device, index, "cuBLAS/AdamW state is per thread and per device: this thread already used device {}", blas.device);
        f(blas)
    })
}

/// Panics with the CUDA/cuBLAS error: a failed GEMM on valid operands is a broken device or
/// driver, which burn's own kernels report the same way.
fn check<E: std::fmt::Debug>(what: &str, r: Result<(), E>) {
    if let Err(e) = r {
        panic!("cuBLAS {what}: {e:?}");
    }
}

/// `op(a) · op(b)` for tensors of rank ≥ 2 on one CUDA device: the last two dimensions are
/// the matrices, the leading ones (equal in `a` and `b`) a batch. `op(a)` = `aᵀ` when `ta`
/// (so a matrix of a is stored [K, M], else [M, K]) and likewise `b` with `tb` (stored
/// [N, K], else [K, N]). Returns [..., M, N] in the operands' dtype (bf16 or f32; both the
/// same), through `cublasGemmEx` (one matrix) or `cublasGemmStridedBatchedEx`.
///
/// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, which is what is asked
/// of cuBLAS (cuBLAS documentation, "cublasGemmEx"; the usual row-major trick).
pub(crate) fn gemm(a: Prim, b: Prim, ta: bool, tb: bool) -> Prim {
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
    let (dtype, elem) = match a.dtype {
        DType::BF16 => (cb::cudaDataType::CUDA_R_16BF, 2usize),
        DType::F32 => (cb::cudaDataType::CUDA_R_32F, 4),
        other => panic!("gemm: dtype {other:?} (bf16 or f32 only)"),
    };
    let client = a.client.clone();
    let out = client.empty(batch * m * n * elem);
    let mut shape: Vec<usize> = sa[..r - 2].to_vec();
    shape.extend([m, n]);
    let c = CubeTensor::new_contiguous(client.clone(), a.device.clone(), Shape::from(shape), out, a.dtype);
    if batch == 0 || m == 0 || n == 0 {
        return c;
    }
    // The operands' pending writes are on CubeCL's stream: wait for them.
    check("sync before GEMM", burn_cubecl::cubecl::future::block_on(client.sync()));
    // Held until the GEMM has finished: they keep the buffers from being reused.
    let res = |t: &Prim| client.get_resource(t.handle.clone()).expect("device buffer of a live tensor");
    let (ra, rb, rc) = (res(&a), res(&b), res(&c));
    let (pa, pb, pc) = (ra.resource().ptr, rb.resource().ptr, rc.resource().ptr);
    let (alpha, beta) = (1f32, 0f32);
    let op = |t: bool| if t { cb::cublasOperation_t::CUBLAS_OP_T } else { cb::cublasOperation_t::CUBLAS_OP_N };
    let dim = |x: usize| i32::try_from(x).expect("gemm: dimension above i32::MAX");
    // cuBLAS's A is our `b` and its B our `a` (Cᵀ = op(b)ᵀ·op(a)ᵀ): these are their
    // leading dimensions in cuBLAS's naming.
    let (lda, ldb) = (dim(if tb { k } else { n }), dim(if ta { m } else { k }));
    with_cuda(a.device.index, |blas| {
        let t = Instant::now();
        let (alpha, beta) = (&alpha as *const f32 as *const _, &beta as *const f32 as *const _);
        let (compute, algo) = (cb::cublasComputeType_t::CUBLAS_COMPUTE_32F, cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT);
        unsafe {
            if batch == 1 {
                check("GemmEx", cudarc::cublas::result::gemm_ex(blas.handle, op(tb), op(ta), dim(n), dim(m), dim(k), alpha, pb as *const _, dtype, lda, pa as *const _, dtype, ldb, beta, pc as *mut _, dtype, dim(n), compute, algo));
            } else {
                let stride = |x: usize| x as i64;
                check(
                    "GemmStridedBatchedEx",
                    cudarc::cublas::result::gemm_strided_batched_ex(
                        blas.handle,
                        op(tb),
                        op(ta),
                        dim(n),
                        dim(m),
                        dim(k),
                        alpha,
                        pb as *const _,
                        dtype,
                        lda,
                        stride(k * n),
                        pa as *const _,
                        dtype,
                        ldb,
                        stride(m * k),
                        beta,
                        pc as *mut _,
                        dtype,
                        dim(n),
                        stride(m * n),
                        dim(batch),
                        compute,
                        algo,
                    ),
                );
            }
            check("stream sync after GEMM", cudarc::driver::result::stream::synchronize(blas.stream));
        }
        GEMMS.fetch_add(1, Ordering::Relaxed);
        GEMM_NS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    });
    drop((ra, rb, rc));
    c
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
    /// dcᵀ · op(a) when `tb`), each one [`gemm`] with flags and no transposed copies.
    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let Gemm { ta, tb } = self;
        let (a, b) = ops.state;
        let a: Option<Prim> = a.map(|a| checkpointer.retrieve_node_output(a));
        let b: Option<Prim> = b.map(|b| checkpointer.retrieve_node_output(b));
        binary::<Inner, _, _>(
            ops.parents,
            ops.node,
            grads,
            |dc| {
                let b = b.expect("b kept for da");
                if ta { gemm(b, dc, tb, true) } else { gemm(dc, b, false, !tb) }
            },
            |dc| {
                let a = a.expect("a kept for db");
                if tb { gemm(dc, a, true, ta) } else { gemm(a, dc, !ta, false) }
            },
        );
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
    use std::any::TypeId;
    // By backend, not by primitive: both checkpoint strategies share one primitive type.
    let ty = TypeId::of::<B>();
    let kind = if ty == TypeId::of::<Autodiff<Inner, NoCheckpointing>>() {
        0
    } else if ty == TypeId::of::<Autodiff<Inner, BalancedCheckpointing>>() {
        1
    } else if ty == TypeId::of::<Inner>() {
        2
    } else {
        return Err((a, b));
    };
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
    if !fits || !enabled() {
        return Err((a, b));
    }
    let (TensorPrimitive::Float(ap), TensorPrimitive::Float(bp)) = (a.into_primitive(), b.into_primitive()) else {
        unreachable!("float tensors have float primitives")
    };
    /// `p` as type `T`, which the `TypeId` check above says it is.
    fn to<T: 'static, P: 'static>(p: P) -> T {
        *(Box::new(p) as Box<dyn Any>).downcast::<T>().ok().expect("type checked by TypeId")
    }
    let c: FloatTensor<B> = match kind {
        0 => to(gemm_autodiff::<NoCheckpointing>(to(ap), to(bp), ta, tb)),
        1 => to(gemm_autodiff::<BalancedCheckpointing>(to(ap), to(bp), ta, tb)),
        _ => to(gemm(to(ap), to(bp), ta, tb)),
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(c)))
}

/// The fused AdamW step (CUDA C, compiled by NVRTC at first use): one pass reads p, g, m,
/// v and writes p, m, v, in the order of burn's `AdamW` (burn-optim 0.21 `adamw.rs`):
/// m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p·(1 − lr·λ) − lr · (m/bc₁) / (√(v/bc₂) + ε),
/// with bcᵢ = 1 − βᵢᵗ; `first` = no moments yet (taken as 0).
const ADAMW_SRC: &str = r#"
extern "C" __global__ void bagel_adamw(float* __restrict__ p_out, float* __restrict__ m_out, float* __restrict__ v_out,
    const float* __restrict__ p, const float* __restrict__ g, const float* __restrict__ m, const float* __restrict__ v,
    unsigned long long n, int first, float lr, float b1, float b2, float eps, float decay, float bc1, float bc2) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)blockDim.x * gridDim.x) {
    float gi = g[i];
    float mi = (first ? 0.0f : m[i] * b1) + gi * (1.0f - b1);
    float vi = (first ? 0.0f : v[i] * b2) + (gi * gi) * (1.0f - b2);
    m_out[i] = mi;
    v_out[i] = vi;
    p_out[i] = p[i] * decay - ((mi / bc1) / (sqrtf(vi / bc2) + eps)) * lr;
  }
}
"#;

/// Compile [`ADAMW_SRC`] and load it into the current context.
fn load_adamw() -> cu::CUfunction {
    let ptx = cudarc::nvrtc::compile_ptx(ADAMW_SRC).unwrap_or_else(|e| panic!("NVRTC: fused AdamW: {e:?}"));
    let src = std::ffi::CString::new(ptx.to_src()).expect("PTX has no NUL");
    unsafe {
        let module = cudarc::driver::result::module::load_data(src.as_ptr() as *const _).expect("load the fused AdamW module");
        cudarc::driver::result::module::get_function(module, std::ffi::CString::new("bagel_adamw").unwrap()).expect("bagel_adamw in its module")
    }
}

/// One AdamW step ([`crate::optim::FusedAdamW`]) on one parameter as the fused kernel, when
/// `B` is this crate's inner CUDA backend, the path is on (`BAGEL_CUBLAS` as for the
/// GEMMs), and parameter, gradient and moments are f32 with no AMSGrad maximum; `Err`
/// with the arguments handed back for burn's `AdamW` otherwise.
#[allow(clippy::type_complexity)]
pub(crate) fn adamw_step<B: Backend, const D: usize>(
    opt: &crate::optim::FusedAdamW,
    lr: f64,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<AdamWState<B, D>>,
) -> Result<(Tensor<B, D>, Option<AdamWState<B, D>>), (Tensor<B, D>, Tensor<B, D>, Option<AdamWState<B, D>>)> {
    use std::any::TypeId;
    let f32s = tensor.dtype() == DType::F32
        && grad.dtype() == DType::F32
        && state.as_ref().is_none_or(|s| s.momentum.max_moment_2.is_none() && s.momentum.moment_1.dtype() == DType::F32 && s.momentum.moment_2.dtype() == DType::F32);
    if TypeId::of::<B>() != TypeId::of::<Inner>() || !f32s || !enabled() {
        return Err((tensor, grad, state));
    }
    /// `p` as type `T`, which the `TypeId` check above says it is.
    fn to<T: 'static, P: 'static>(p: P) -> T {
        *(Box::new(p) as Box<dyn Any>).downcast::<T>().ok().expect("type checked by TypeId")
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
    let client = p.client.clone();
    let new = || CubeTensor::new_contiguous(client.clone(), p.device.clone(), shape.clone(), client.empty(n * 4), DType::F32);
    let (p_out, m_out, v_out) = (new(), new(), new());
    if n > 0 {
        check("sync before AdamW", burn_cubecl::cubecl::future::block_on(client.sync()));
        let res = |t: &Prim| client.get_resource(t.handle.clone()).expect("device buffer of a live tensor");
        let held: Vec<_> = [&p_out, &m_out, &v_out, &p, &g].into_iter().chain(moments.iter().flat_map(|(m, v)| [m, v])).map(res).collect();
        let ptr = |i: usize| held.get(i).map_or(0u64, |r| r.resource().ptr);
        let (mut po, mut mo, mut vo, mut pi, mut gi) = (ptr(0), ptr(1), ptr(2), ptr(3), ptr(4));
        let (mut mi, mut vi) = (ptr(5), ptr(6));
        let mut n64 = n as u64;
        let mut first: i32 = moments.is_none().into();
        let decay_rate = lr * opt.weight_decay as f64;
        let (mut lr32, mut b1, mut b2, mut eps) = (lr as f32, opt.beta_1, opt.beta_2, opt.epsilon);
        let mut decay = (1.0 - decay_rate) as f32;
        let mut bc1 = 1f32 - opt.beta_1.powi(time as i32);
        let mut bc2 = 1f32 - opt.beta_2.powi(time as i32);
        with_cuda(p.device.index, |blas| {
            let f = *blas.adamw.get_or_insert_with(load_adamw);
            // cuLaunchKernel takes a pointer to each argument, in the kernel's order.
            use std::ffi::c_void;
            let mut params: [*mut c_void; 16] = [
                &mut po as *mut u64 as *mut c_void,
                &mut mo as *mut u64 as *mut c_void,
                &mut vo as *mut u64 as *mut c_void,
                &mut pi as *mut u64 as *mut c_void,
                &mut gi as *mut u64 as *mut c_void,
                &mut mi as *mut u64 as *mut c_void,
                &mut vi as *mut u64 as *mut c_void,
                &mut n64 as *mut u64 as *mut c_void,
                &mut first as *mut i32 as *mut c_void,
                &mut lr32 as *mut f32 as *mut c_void,
                &mut b1 as *mut f32 as *mut c_void,
                &mut b2 as *mut f32 as *mut c_void,
                &mut eps as *mut f32 as *mut c_void,
                &mut decay as *mut f32 as *mut c_void,
                &mut bc1 as *mut f32 as *mut c_void,
                &mut bc2 as *mut f32 as *mut c_void,
            ];
            let blocks = n.div_ceil(256).min(1 << 16) as u32;
            unsafe {
                check("launch fused AdamW", cudarc::driver::result::launch_kernel(f, (blocks, 1, 1), (256, 1, 1), 0, blas.stream, &mut params));
                check("stream sync after AdamW", cudarc::driver::result::stream::synchronize(blas.stream));
            }
        });
        drop(held);
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
    fn random(n: usize, seed: u64) -> Vec<f32> {
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
    fn bf16(v: &[f32]) -> Vec<f32> {
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

    /// ‖out − ref‖₂ / ‖ref‖₂ (METHOD.md's measure; NaN fails every bound).
    fn rel_err<B2: Backend>(out: Tensor<B2, 2>, reference: &[f64]) -> f64 {
        let out: Vec<f32> = out.cast(FloatDType::F32).into_data().to_vec().unwrap();
        assert_eq!(out.len(), reference.len());
        let num: f64 = out.iter().zip(reference).map(|(&o, &r)| (o as f64 - r).powi(2)).sum();
        let den: f64 = reference.iter().map(|r| r * r).sum();
        (num / den).sqrt()
    }

    /// The fused AdamW kernel against burn's `AdamW` (the unfused reference it replaces),
    /// three steps on one parameter with weight decay: parameters and both moments within
    /// 1e-5 relative (f32 arithmetic; the kernel keeps burn's operation order, so the
    /// differences are the compiler's contractions, ≈ 1e-7).
    #[test]
    fn fused_adamw_matches_burns_adamw() {
        use burn::optim::{AdamWConfig, SimpleOptimizer};
        if !enabled() || cudarc::driver::CudaContext::device_count().unwrap_or(0) == 0 {
            eprintln!("skipped: no CUDA device or no libcublas on this machine");
            return;
        }
        let device = burn::backend::cuda::CudaDevice::new(0);
        let fused = crate::optim::FusedAdamW::new(0.9, 0.95, 1e-8, 0.1);
        let reference = AdamWConfig::new().with_beta_1(0.9).with_beta_2(0.95).with_epsilon(1e-8).with_weight_decay(0.1).build();
        let t = |seed: u64| Tensor::<Inner, 2>::from_data(TensorData::new(random(64 * 48, seed), [64, 48]), &device);
        let (mut pf, mut sf) = (t(11), None);
        let (mut pr, mut sr) = (t(11), None);
        let before = ADAMW_STEPS.load(Ordering::Relaxed);
        for step in 0..3u64 {
            let g = t(20 + step);
            (pf, sf) = SimpleOptimizer::<Inner>::step(&fused, 1e-2, pf, g.clone(), sf);
            (pr, sr) = reference.step(1e-2, pr, g, sr);
        }
        assert_eq!(ADAMW_STEPS.load(Ordering::Relaxed) - before, 3, "the fused kernel ran each step");
        let (sf, sr) = (sf.unwrap().momentum, sr.unwrap().momentum);
        assert_eq!((sf.time, sr.time), (3, 3));
        let rel = |a: Tensor<Inner, 2>, b: Tensor<Inner, 2>| {
            let b64: Vec<f64> = b.into_data().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect();
            rel_err(a, &b64)
        };
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
        if !enabled() || cudarc::driver::CudaContext::device_count().unwrap_or(0) == 0 {
            eprintln!("skipped: no CUDA device or no libcublas on this machine");
            return;
        }
        let device = burn::backend::cuda::CudaDevice::new(0);
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
            let rel = |x: &[f32], r: &[f32]| -> f64 {
                let num: f64 = x.iter().zip(r).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
                (num / r.iter().map(|&b| (b as f64).powi(2)).sum::<f64>()).sqrt()
            };
            let ec = rel(&c1, &c_ref.iter().map(|&x| x as f32).collect::<Vec<_>>());
            let (ea, eb) = (rel(&da1, &da0), rel(&db1, &db0));
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
}
