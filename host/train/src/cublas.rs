//! cuBLAS GEMMs for the linear layers on the CUDA backend (issue 7, "custom burn ops that
//! call NVIDIA's libraries through cudarc").
//!
//! burn 0.21's CUDA matmul kernels (CubeCL) reach about 60 TFLOP/s in bf16 on an H200, a
//! tenth of the tensor-core rate (bench/RESULTS.md, "where the step goes"). This module
//! runs the model's linear layers, `y = x · Wᵀ` for x [M, K] and W [N, K], and their two
//! backward GEMMs (`dx = dy · W` [M, K], `dW = dyᵀ · x` [N, K]) through `cublasGemmEx`
//! on burn's own device buffers: bf16 or f32 operands, f32 accumulation
//! (`CUBLAS_COMPUTE_32F`, no TF32, as PyTorch's default), output in the operands' dtype.
//!
//! Ordering: CubeCL launches on its own non-blocking streams, which cuBLAS cannot see
//! through burn 0.21's API. A GEMM therefore waits for the client's queued work
//! (`ComputeClient::sync`), runs on a stream of its own, and waits for that stream before
//! it returns, so every kernel CubeCL queues afterwards sees the result. That is two host
//! waits per GEMM (three GEMMs per linear layer per step); the profile in
//! bench/RESULTS.md says what they cost.
//!
//! Dispatch: [`linear`] is called from the backend-generic model code. It checks the
//! backend's tensor type at run time (`Any` downcasts of the primitives) and takes the
//! cuBLAS path only for the CUDA backends of this crate ([`crate::CudaBackend`],
//! [`crate::CudaBackendCheckpointed`], [`crate::CudaInference`]); every other backend, and
//! `BAGEL_CUBLAS=0`, keeps burn's matmul.
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

/// Per-thread cuBLAS state: the handle, bound to a stream of its own.
struct Blas {
    handle: cb::cublasHandle_t,
    stream: cu::CUstream,
}

thread_local! {
    static BLAS: RefCell<Option<Blas>> = const { RefCell::new(None) };
}

/// Panics with the CUDA/cuBLAS error: a failed GEMM on valid operands is a broken device or
/// driver, which burn's own kernels report the same way.
fn check<E: std::fmt::Debug>(what: &str, r: Result<(), E>) {
    if let Err(e) = r {
        panic!("cuBLAS {what}: {e:?}");
    }
}

/// `op(a) · op(b)` for 2-D tensors on one CUDA device, where `op(a)` = `aᵀ` when `ta` (so
/// a is stored [K, M], else [M, K]) and likewise `b` with `tb` (stored [N, K], else
/// [K, N]). Returns [M, N] in the operands' dtype (bf16 or f32; both the same).
///
/// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, which is what is asked
/// of `cublasGemmEx` (cuBLAS documentation, "cublasGemmEx"; the usual row-major trick).
pub(crate) fn gemm(a: Prim, b: Prim, ta: bool, tb: bool) -> Prim {
    let a = burn_cubecl::kernel::into_contiguous(a);
    let b = burn_cubecl::kernel::into_contiguous(b);
    let (sa, sb) = (a.shape(), b.shape());
    assert!(sa.len() == 2 && sb.len() == 2, "gemm: 2-D operands, got {:?} and {:?}", &sa[..], &sb[..]);
    let (m, k) = if ta { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
    let (kb, n) = if tb { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
    assert_eq!(k, kb, "gemm: inner dimensions differ ({:?}{} · {:?}{})", &sa[..], if ta { "ᵀ" } else { "" }, &sb[..], if tb { "ᵀ" } else { "" });
    assert_eq!(a.dtype, b.dtype, "gemm: operand dtypes differ");
    let (dtype, elem) = match a.dtype {
        DType::BF16 => (cb::cudaDataType::CUDA_R_16BF, 2usize),
        DType::F32 => (cb::cudaDataType::CUDA_R_32F, 4),
        other => panic!("gemm: dtype {other:?} (bf16 or f32 only)"),
    };
    let client = a.client.clone();
    let out = client.empty(m * n * elem);
    let c = CubeTensor::new_contiguous(client.clone(), a.device.clone(), Shape::from([m, n]), out, a.dtype);
    if m == 0 || n == 0 {
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
    BLAS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let blas = slot.get_or_insert_with(|| unsafe {
            // The primary context of the tensor's device, as CubeCL uses.
            let dev = cudarc::driver::result::device::get(dim(a.device.index)).expect("CUDA device");
            let ctx = cudarc::driver::result::primary_ctx::retain(dev).expect("CUDA primary context");
            cudarc::driver::result::ctx::set_current(ctx).expect("CUDA context current");
            let stream = cudarc::driver::result::stream::create(cudarc::driver::result::stream::StreamKind::NonBlocking).expect("CUDA stream");
            let handle = cudarc::cublas::result::create_handle().expect("cuBLAS handle");
            check("set stream", cudarc::cublas::result::set_stream(handle, stream as _));
            Blas { handle, stream }
        });
        let t = Instant::now();
        unsafe {
            check(
                "GemmEx",
                cudarc::cublas::result::gemm_ex(
                    blas.handle,
                    op(tb),
                    op(ta),
                    dim(n),
                    dim(m),
                    dim(k),
                    &alpha as *const f32 as *const _,
                    pb as *const _,
                    dtype,
                    dim(if tb { k } else { n }),
                    pa as *const _,
                    dtype,
                    dim(if ta { m } else { k }),
                    &beta as *const f32 as *const _,
                    pc as *mut _,
                    dtype,
                    dim(n),
                    cb::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                ),
            );
            check("stream sync after GEMM", cudarc::driver::result::stream::synchronize(blas.stream));
        }
        GEMMS.fetch_add(1, Ordering::Relaxed);
        GEMM_NS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    });
    drop((ra, rb, rc));
    c
}

/// Autodiff node of `y = x · Wᵀ`: state = the checkpointed x and W.
#[derive(Debug)]
struct Linear;

impl Backward<Inner, 2> for Linear {
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let (x, w) = ops.state;
        let x: Option<Prim> = x.map(|x| checkpointer.retrieve_node_output(x));
        let w: Option<Prim> = w.map(|w| checkpointer.retrieve_node_output(w));
        binary::<Inner, _, _>(
            ops.parents,
            ops.node,
            grads,
            // dx [M, K] = dy [M, N] · W [N, K]
            |dy| gemm(dy, w.expect("W kept for dx"), false, false),
            // dW [N, K] = dyᵀ [N, M] · x [M, K]
            |dy| gemm(dy, x.expect("x kept for dW"), true, false),
        );
    }
}

/// `x · Wᵀ` under autodiff with checkpoint strategy `C`.
fn linear_autodiff<C: CheckpointStrategy>(x: FloatTensor<Autodiff<Inner, C>>, w: FloatTensor<Autodiff<Inner, C>>) -> FloatTensor<Autodiff<Inner, C>> {
    let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
    match Linear.prepare::<C>([x.node.clone(), w.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            // dx needs W, dW needs x.
            let x_state = w_tracked.then(|| prep.checkpoint(&x));
            let w_state = x_tracked.then(|| prep.checkpoint(&w));
            prep.finish((x_state, w_state), gemm(x.primitive, w.primitive, false, true))
        }
        OpsKind::UnTracked(prep) => prep.finish(gemm(x.primitive, w.primitive, false, true)),
    }
}

/// `x · Wᵀ` for x [M, K] and W [N, K] → [M, N] through cuBLAS when `B` is one of this
/// crate's CUDA backends and the path is on (module docs); `Err` with the operands handed
/// back for burn's matmul otherwise.
pub(crate) fn linear<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
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
        return Err((x, w));
    };
    if !enabled() {
        return Err((x, w));
    }
    let (TensorPrimitive::Float(xp), TensorPrimitive::Float(wp)) = (x.into_primitive(), w.into_primitive()) else {
        unreachable!("float tensors have float primitives")
    };
    /// `p` as type `T`, which the `TypeId` check above says it is.
    fn to<T: 'static, P: 'static>(p: P) -> T {
        *(Box::new(p) as Box<dyn Any>).downcast::<T>().ok().expect("type checked by TypeId")
    }
    let y: FloatTensor<B> = match kind {
        0 => to(linear_autodiff::<NoCheckpointing>(to(xp), to(wp))),
        1 => to(linear_autodiff::<BalancedCheckpointing>(to(xp), to(wp))),
        _ => to(gemm(to(xp), to(wp), false, true)),
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(y)))
}

#[cfg(test)]
mod tests {
    //! Needs an NVIDIA GPU and libcublas: build with
    //! `cargo test --release -p bagel-train --features cuda --no-run --target-dir target/cuda`,
    //! run the test binary on the GPU machine (`<binary> cublas --nocapture`, with
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
                let y = if fast { linear(xl, wl).ok().expect("cuBLAS path taken") } else { xl.matmul(wl.transpose()) };
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
        // Transposed operand, inference backend: aᵀ · b for a [K, M], b [K, N].
        let (a, b) = (random(k * m, 4), random(k * n, 5));
        let t = |v: &[f32], r: usize, c: usize| Tensor::<Inner, 2>::from_data(TensorData::new(v.to_vec(), [r, c]), &device).into_primitive().tensor();
        let c = Tensor::<Inner, 2>::from_primitive(TensorPrimitive::Float(gemm(t(&a, k, m), t(&b, k, n), true, false)));
        let e = rel_err(c, &gemm_f64(&a, &b, m, k, n, true, false));
        eprintln!("F32 aᵀ·b: {e:.1e}");
        assert!(e < 1e-5, "aᵀ·b: {e}");
    }
}
