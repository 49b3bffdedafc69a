//! Causal grouped-query attention as one autodiff op: cuBLAS for the products, a fused
//! softmax kernel forward and a fused softmax-gradient kernel backward, and no f32 score
//! matrix kept between forward and backward (only P, by default: [`keep_p`]) (issue 7,
//! "fused flash attention with backward ... on burn's own stream and buffers").
//!
//! For q [B, H, S, hd], k and v [B, KV, S, hd] (H a multiple of KV; query head h reads KV
//! head h / (H/KV), HF's `repeat_kv`): O = softmax(q·kᵀ/√hd + causal mask)·v, [B, H, S, hd].
//! q is first reordered to [B·KV, S, G, hd] (G = H/KV; one copy kernel): the G query heads
//! of a KV head become the rows of one matrix, ordered by position, then head, so that q
//! [B·KV, G·S, hd] multiplies k [B·KV, S, hd] in one strided-batched GEMM without
//! repeating k or v (backward sums over the group inside the GEMM, where `repeat_kv`'s
//! backward is a separate reduction), and the rows of a range of positions are
//! contiguous. O comes back to [B, H, S, hd] the same way.
//!
//! Packed input ([`attention_packed`], the model's CUDA path): one linear layer's output
//! x [B, S, (H + 2·KV)·hd], per position the H query heads, the KV key heads, the KV value
//! heads. A kernel (`bagel_qkv_split`) writes q in the reordered layout and k, v
//! [B, KV, S, hd], with RoPE on q and k; O is written heads merged, [B, S, H·hd]; backward
//! reorders dO from that layout and a kernel (`bagel_qkv_merge`) writes the packed
//! gradient from dq, dk, dv with RoPE's backward. Unlike [`attention`], this entry point
//! panics on shapes it does not take: callers check [`packed_fits`] first.
//!
//! Causal blocks: the positions are split into c = min(4, ⌈S/128⌉) blocks of ⌈S/c⌉
//! positions, the last possibly shorter (S = 1024: 4 of 256; S = 300: 3 of 100). The rows of block i only see keys up to the end
//! of block i, so each product is c strided-batched GEMMs over those key ranges, and
//! the masked triangle is computed and stored only inside the diagonal blocks: a
//! fraction (c+1)/2c of the square for equal blocks instead of all of it (5/8 at c = 4), in FLOPs and in
//! bytes of the score matrices.
//!
//! Forward: S = (1/√hd)·q·kᵀ in f32 (bf16 or f32 operands, f32 accumulation), one block per
//! row computes the row's max m and Σ exp, writes P = exp(S − m)/Σ in the operands' dtype
//! (0 above the diagonal) and the row's log-sum-exp L = m + ln Σ (f32); then O = P·v. S is
//! dropped; the op keeps the reordered q, k, v, L and, by default, P ([`keep_p`]). With
//! `BAGEL_ATTN_RECOMPUTE=1` P is dropped too and backward recomputes it from S and L, as
//! flash attention does (Dao et al. 2022, "FlashAttention", §3.1).
//!
//! Backward, with dO the gradient of O: dP = dO·vᵀ (f32), then one block per row writes
//! dS = (1/√hd)·P∘(dP − Σⱼ Pⱼ dPⱼ) (the softmax Jacobian, Dao et al. 2022, appendix B.2;
//! Σⱼ Pⱼ dPⱼ = rowsum(dO∘O)) in the operands' dtype, from the kept P; when P was not kept,
//! S again (same GEMMs) and the kernel writes P = exp(S − L) as well. Then dv = Pᵀ·dO,
//! dq = dS·k, dk = dSᵀ·q (dv and dk sum the blocks' products: the last block's GEMM
//! writes, the others add with β = 1, so in bf16 dv and dk are rounded once per block).
//! From a kept P in bf16, Σⱼ Pⱼ dPⱼ and dS use the bf16-rounded P (2⁻⁹ relative, the
//! rounding dS itself gets when stored).
//!
//! Unlike FlashAttention the S and dP tiles are not kept on chip: each layer's forward
//! writes and reads the causal blocks of one [B·H, S, S] f32 matrix (S) and of one in the
//! operands' dtype (P), its backward of one f32 one (dP) and one in the operands' dtype
//! (dS), plus S and P when P was not kept; all but the kept P are freed when the op
//! returns.
use super::*;

/// Helpers shared by every kernel source of this module: −∞, bf16/f32 loads and stores
/// (bf16 as its 16 bits, `unsigned short`, stored round-to-nearest-even, so no CUDA
/// header is needed), block-wide max and sum.
pub(super) const COMMON: &str = r#"
__device__ __forceinline__ float bagel_neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float bagel_load(const float* p) { return *p; }
__device__ __forceinline__ float bagel_load(const unsigned short* p) { return __uint_as_float(((unsigned int)*p) << 16); }
__device__ __forceinline__ void bagel_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void bagel_store(unsigned short* p, float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { *p = (unsigned short)((u >> 16) | 0x40u); return; }
  u += 0x7fffu + ((u >> 16) & 1u);
  *p = (unsigned short)(u >> 16);
}
/* Block-wide max / sum of x (blockDim.x a multiple of 32, at most 1024); every thread gets it. */
__device__ __forceinline__ float bagel_block_max(float x, float* sh) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = x;
  __syncthreads();
  x = (threadIdx.x & 31) < (blockDim.x >> 5) ? sh[threadIdx.x & 31] : bagel_neg_inf();
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  __syncthreads();
  return x;
}
__device__ __forceinline__ float bagel_block_sum(float x, float* sh) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = x;
  __syncthreads();
  x = (threadIdx.x & 31) < (blockDim.x >> 5) ? sh[threadIdx.x & 31] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  __syncthreads();
  return x;
}
"#;

/// The softmax kernels, the head/position reorder and the packed input's split and merge,
/// launched inside this op's [`on_stream`] sessions between its GEMMs (compiled by NVRTC
/// after [`COMMON`]).
pub(super) const SRC: &str = r#"
/* Rows of a batch are ordered (query position, head of the group): with n positions and g
   heads per group, row r is position (r mod g*n) / g. Causal blocks of cs positions: the
   block of position pos covers key columns [0, end), end = min((pos / cs + 1) * cs, n); the
   row keeps columns 0..=pos. s, dp, p, ds have n columns per row (leading dimension n);
   P and dS are written on [0, end) (0 above the diagonal) and never read beyond. */
__device__ __forceinline__ int bagel_attn_pos(size_t row, int n, int g) { return (int)((row % ((size_t)g * (size_t)n)) / (size_t)g); }
__device__ __forceinline__ int bagel_attn_end(int pos, int n, int cs) { const int e = (pos / cs + 1) * cs; return e < n ? e : n; }
/* One block per row of s (already scaled). */
template <typename T>
__device__ void bagel_softmax_fwd(const float* __restrict__ s, T* __restrict__ p, float* __restrict__ lse, int n, int g, int cs) {
  __shared__ float sh[32];
  const size_t row = blockIdx.x;
  const int pos = bagel_attn_pos(row, n, g);
  const int end = bagel_attn_end(pos, n, cs);
  const float* sr = s + row * (size_t)n;
  T* pr = p + row * (size_t)n;
  float m = bagel_neg_inf();
  for (int c = threadIdx.x; c <= pos; c += blockDim.x) m = fmaxf(m, sr[c]);
  m = bagel_block_max(m, sh);
  float l = 0.0f;
  for (int c = threadIdx.x; c <= pos; c += blockDim.x) l += expf(sr[c] - m);
  l = bagel_block_sum(l, sh);
  const float inv = 1.0f / l;
  for (int c = threadIdx.x; c < end; c += blockDim.x) bagel_store(pr + c, c <= pos ? expf(sr[c] - m) * inv : 0.0f);
  if (threadIdx.x == 0) lse[row] = m + logf(l);
}
/* p = exp(s - lse) and ds = scale * p * (dp - sum_j p_j dp_j), one block per row, masked as above. */
template <typename T>
__device__ void bagel_softmax_bwd(const float* __restrict__ s, const float* __restrict__ dp, const float* __restrict__ lse,
                                  T* __restrict__ p, T* __restrict__ ds, int n, int g, int cs, float scale) {
  __shared__ float sh[32];
  const size_t row = blockIdx.x;
  const int pos = bagel_attn_pos(row, n, g);
  const int end = bagel_attn_end(pos, n, cs);
  const float* sr = s + row * (size_t)n;
  const float* dpr = dp + row * (size_t)n;
  const float L = lse[row];
  float d = 0.0f;
  for (int c = threadIdx.x; c <= pos; c += blockDim.x) d += expf(sr[c] - L) * dpr[c];
  d = bagel_block_sum(d, sh);
  T* pr = p + row * (size_t)n;
  T* dsr = ds + row * (size_t)n;
  for (int c = threadIdx.x; c < end; c += blockDim.x) {
    const float pc = c <= pos ? expf(sr[c] - L) : 0.0f;
    bagel_store(pr + c, pc);
    bagel_store(dsr + c, c <= pos ? scale * pc * (dpr[c] - d) : 0.0f);
  }
}
/* The same from the P the forward pass kept (no S): ds = scale * p * (dp - sum_j p_j dp_j), one block per row. */
template <typename T>
__device__ void bagel_softmax_bwd_p(const T* __restrict__ p, const float* __restrict__ dp, T* __restrict__ ds, int n, int g, int cs, float scale) {
  __shared__ float sh[32];
  const size_t row = blockIdx.x;
  const int pos = bagel_attn_pos(row, n, g);
  const int end = bagel_attn_end(pos, n, cs);
  const T* pr = p + row * (size_t)n;
  const float* dpr = dp + row * (size_t)n;
  float d = 0.0f;
  for (int c = threadIdx.x; c <= pos; c += blockDim.x) d += bagel_load(pr + c) * dpr[c];
  d = bagel_block_sum(d, sh);
  T* dsr = ds + row * (size_t)n;
  for (int c = threadIdx.x; c < end; c += blockDim.x) bagel_store(dsr + c, c <= pos ? scale * bagel_load(pr + c) * (dpr[c] - d) : 0.0f);
}
/* y [nb, b, a, inner] = x [nb, a, b, inner] with the two middle dimensions swapped; one element per thread, grid-stride. */
template <typename T>
__device__ void bagel_swap_mid(const T* __restrict__ x, T* __restrict__ y, int a, int b, int inner, unsigned long long total) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
    const unsigned long long t = i % inner;
    unsigned long long r = i / inner;
    const unsigned long long ai = r % a;
    r /= a;
    const unsigned long long bi = r % b;
    const unsigned long long nb = r / b;
    y[i] = x[((nb * a + ai) * b + bi) * inner + t];
  }
}
/* Packed projections: x [B, S, W] with W = (H + 2 KV) D, each row the H query heads, then the
   KV key heads, then the KV value heads (one linear layer's output). Writes q [B, KV, S, G, D]
   (G = H / KV; query head h = kv * G + g) and k [B, KV, S, D] with RoPE (HF rotate-half, f32
   tables cos, sin [S, D]: y = x cos + rot(x) sin, rot(x)_d = -x_{d+D/2} for d < D/2, x_{d-D/2}
   after), and v [B, KV, S, D] as it is. One element of x per thread, grid-stride. */
/* The split-layout place of packed element i of x [B, S, W] (W = (H + 2 KV) D): its row (b, s),
   head slot hh (query heads, then key heads, then value heads) and lane d, and where that head's D
   values start in q [B, KV, S, G, D], k or v [B, KV, S, D] (G = H / KV; query head h = kv * G + g).
   The one statement of the layout, for bagel_qkv_split and its gradient bagel_qkv_merge. */
struct bagel_qkv_at {
  unsigned long long bs, s, split; /* bs = b * S + s; split: offset of the head's row in q, k or v */
  int hh, d, part;                 /* part: 0 q, 1 k, 2 v */
};
__device__ inline bagel_qkv_at bagel_qkv_place(unsigned long long i, int S, int H, int KV, int D) {
  const unsigned long long W = (unsigned long long)(H + 2 * KV) * D;
  bagel_qkv_at a;
  const int c = (int)(i % W);
  a.bs = i / W;
  a.s = a.bs % S;
  const unsigned long long b = a.bs / S;
  a.hh = c / D;
  a.d = c % D;
  if (a.hh < H) {
    const int G = H / KV;
    a.part = 0;
    a.split = (((b * KV + a.hh / G) * S + a.s) * G + a.hh % G) * D;
  } else {
    a.part = a.hh < H + KV ? 1 : 2;
    a.split = ((b * KV + (a.hh - H - (a.part - 1) * KV)) * S + a.s) * D;
  }
  return a;
}
template <typename T>
__device__ void bagel_qkv_split(const T* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn, T* __restrict__ q, T* __restrict__ k,
                                T* __restrict__ v, int S, int H, int KV, int D, unsigned long long total) {
  const unsigned long long W = (unsigned long long)(H + 2 * KV) * D;
  const int half = D / 2;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
    const bagel_qkv_at a = bagel_qkv_place(i, S, H, KV, D);
    const int d = a.d;
    const T* xr = x + a.bs * W + (unsigned long long)a.hh * D;
    float val = bagel_load(xr + d);
    if (a.part < 2) {
      const float rot = d < half ? -bagel_load(xr + d + half) : bagel_load(xr + d - half);
      val = val * cs[a.s * D + d] + rot * sn[a.s * D + d];
    }
    T* dst = a.part == 0 ? q : a.part == 1 ? k : v;
    bagel_store(dst + a.split + d, val);
  }
}
/* The gradient of bagel_qkv_split: dx [B, S, W] from dq [B, KV, S, G, D], dk, dv [B, KV, S, D], RoPE's
   backward on the query and key parts (dx_d = dy_d cos_d + dy_{d+D/2} sin_{d+D/2} for d < D/2,
   dy_d cos_d - dy_{d-D/2} sin_{d-D/2} after), dv copied. */
template <typename T>
__device__ void bagel_qkv_merge(const T* __restrict__ dq, const T* __restrict__ dk, const T* __restrict__ dv, const float* __restrict__ cs,
                                const float* __restrict__ sn, T* __restrict__ dx, int S, int H, int KV, int D, unsigned long long total) {
  const int half = D / 2;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
    const bagel_qkv_at a = bagel_qkv_place(i, S, H, KV, D);
    const int d = a.d;
    if (a.part == 2) {
      bagel_store(dx + i, bagel_load(dv + a.split + d));
      continue;
    }
    const T* src = (a.part == 0 ? dq : dk) + a.split;
    float val = bagel_load(src + d) * cs[a.s * D + d];
    if (d < half) val += bagel_load(src + d + half) * sn[a.s * D + d + half];
    else val -= bagel_load(src + d - half) * sn[a.s * D + d - half];
    bagel_store(dx + i, val);
  }
}
extern "C" __global__ void bagel_qkv_split_bf16(const unsigned short* x, const float* cs, const float* sn, unsigned short* q, unsigned short* k, unsigned short* v, int S, int H, int KV, int D, unsigned long long total) { bagel_qkv_split(x, cs, sn, q, k, v, S, H, KV, D, total); }
extern "C" __global__ void bagel_qkv_split_f32(const float* x, const float* cs, const float* sn, float* q, float* k, float* v, int S, int H, int KV, int D, unsigned long long total) { bagel_qkv_split(x, cs, sn, q, k, v, S, H, KV, D, total); }
extern "C" __global__ void bagel_qkv_merge_bf16(const unsigned short* dq, const unsigned short* dk, const unsigned short* dv, const float* cs, const float* sn, unsigned short* dx, int S, int H, int KV, int D, unsigned long long total) { bagel_qkv_merge(dq, dk, dv, cs, sn, dx, S, H, KV, D, total); }
extern "C" __global__ void bagel_qkv_merge_f32(const float* dq, const float* dk, const float* dv, const float* cs, const float* sn, float* dx, int S, int H, int KV, int D, unsigned long long total) { bagel_qkv_merge(dq, dk, dv, cs, sn, dx, S, H, KV, D, total); }
extern "C" __global__ void bagel_attn_softmax_fwd_bf16(const float* s, unsigned short* p, float* lse, int n, int g, int cs) { bagel_softmax_fwd(s, p, lse, n, g, cs); }
extern "C" __global__ void bagel_attn_softmax_fwd_f32(const float* s, float* p, float* lse, int n, int g, int cs) { bagel_softmax_fwd(s, p, lse, n, g, cs); }
extern "C" __global__ void bagel_attn_softmax_bwd_bf16(const float* s, const float* dp, const float* lse, unsigned short* p, unsigned short* ds, int n, int g, int cs, float scale) { bagel_softmax_bwd(s, dp, lse, p, ds, n, g, cs, scale); }
extern "C" __global__ void bagel_attn_softmax_bwd_f32(const float* s, const float* dp, const float* lse, float* p, float* ds, int n, int g, int cs, float scale) { bagel_softmax_bwd(s, dp, lse, p, ds, n, g, cs, scale); }
extern "C" __global__ void bagel_attn_softmax_bwd_p_bf16(const unsigned short* p, const float* dp, unsigned short* ds, int n, int g, int cs, float scale) { bagel_softmax_bwd_p(p, dp, ds, n, g, cs, scale); }
extern "C" __global__ void bagel_attn_softmax_bwd_p_f32(const float* p, const float* dp, float* ds, int n, int g, int cs, float scale) { bagel_softmax_bwd_p(p, dp, ds, n, g, cs, scale); }
extern "C" __global__ void bagel_swap_mid_bf16(const unsigned short* x, unsigned short* y, int a, int b, int inner, unsigned long long total) { bagel_swap_mid(x, y, a, b, inner, total); }
extern "C" __global__ void bagel_swap_mid_f32(const float* x, float* y, int a, int b, int inner, unsigned long long total) { bagel_swap_mid(x, y, a, b, inner, total); }
"#;

/// Threads per block of the softmax kernels (a multiple of 32, ≤ 1024).
const BLOCK: u32 = 256;

/// Attention calls (forward passes) run by this op since the process started.
pub(super) static CALLS: AtomicU64 = AtomicU64::new(0);

/// What the backward pass needs: q reordered to [B·KV, S, G, hd] (shape [B, KV, S, G, hd]),
/// k and v (contiguous) and the log-sum-exp L of each row of that order (f32, B·H·S);
/// with [`keep_p`], also P ([B·KV·G·S, S] in the operands' dtype, the causal blocks
/// written), so that backward needs neither S nor its GEMMs.
#[derive(Clone, Debug)]
struct Saved {
    q: Prim,
    k: Prim,
    v: Prim,
    lse: Prim,
    p: Option<Prim>,
}

/// Whether the forward pass keeps P for backward (the default; `BAGEL_ATTN_RECOMPUTE=1`
/// recomputes it from S and L, as flash attention does). Keeping it costs B·H·S² elements
/// of the operands' dtype per layer until backward (bf16, 8 × 1024, 16 heads: 268 MB a
/// layer) and saves, per layer and step, backward's S GEMMs (one of its five products of
/// that size) and the write and read of the f32 S and the write of P: 10 bytes per computed
/// score instead of 18 in the backward kernels' traffic.
/// Under gradient checkpointing (`Kind::Balanced`, chosen to save memory) P is never
/// kept.
fn keep_p() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !std::env::var("BAGEL_ATTN_RECOMPUTE").is_ok_and(|v| v == "1"))
}

/// Index of a kernel variant by operand dtype: 0 bf16, 1 f32.
pub(super) fn variant(dt: DType) -> usize {
    match dt {
        DType::BF16 => 0,
        DType::F32 => 1,
        other => panic!("attention: dtype {other:?} (bf16 or f32 only)"),
    }
}

/// Query positions per causal block (module docs) for S positions: S split into at most
/// c = min([`MAX_BLOCKS`], ⌈S/128⌉) blocks of ⌈S/c⌉ positions, the last possibly shorter
/// (S = 1024: 4 blocks of 256; S = 300: 3 of 100).
fn block_len(s: usize) -> usize {
    s.div_ceil(s.div_ceil(128).clamp(1, MAX_BLOCKS))
}

/// Most causal blocks per call: each block is one GEMM per product, so more blocks skip
/// more of the masked triangle (a fraction (c−1)/2c of the square) for more cuBLAS calls.
const MAX_BLOCKS: usize = 4;

/// The shape of one call: GEMM batch B·KV, heads per group G, positions S, head dim hd.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    g: usize,
    s: usize,
    hd: usize,
}

impl Dims {
    /// Rows per batch (G·S).
    fn rows(&self) -> usize {
        self.g * self.s
    }

    /// The causal blocks: (first position, positions) of each.
    fn blocks(&self) -> Vec<(usize, usize)> {
        let cs = block_len(self.s);
        (0..self.s).step_by(cs).map(|p0| (p0, cs.min(self.s - p0))).collect()
    }
}

/// Queue `[nb, a, b, inner] → [nb, b, a, inner]` (elements of `dt`) from `x` to `y` on
/// `blas`'s stream.
///
/// # Safety
/// `x` and `y` must be live buffers of `nb·a·b·inner` elements of `dt`.
unsafe fn swap_mid(blas: &mut Blas, dt: DType, (x, y): (u64, u64), [nb, a, b, inner]: [usize; 4]) {
    let f = blas.kernels().swap_mid[variant(dt)];
    let mut total = (nb * a * b * inner) as u64;
    let (mut x, mut y) = (x, y);
    let (mut a, mut b, mut inner) = (a as i32, b as i32, inner as i32);
    let grid = total.div_ceil(BLOCK as u64).clamp(1, u32::MAX as u64) as u32;
    unsafe { blas.launch("attention reorder", f, grid, BLOCK, &mut args![x, y, a, b, inner, total]) };
}

/// The scratch of one forward pass's products for [`Dims`] `d` in dtype `dt`: S (f32) and P
/// ([B·KV·G·S, S] each; only the causal blocks written), and the outputs L (f32, one per
/// row) and O in the reordered layout [B·KV, S·G, hd].
struct FwdBuffers {
    /// S, f32.
    scores: Prim,
    /// P, operands' dtype.
    p: Prim,
    /// L, f32, one per row.
    lse: Prim,
    /// O in the reordered layout.
    op: Prim,
}

impl FwdBuffers {
    /// Uninitialised buffers on `like`'s device for one call of shape `d`, operands `dt`.
    fn new(like: &Prim, d: Dims, dt: DType) -> Self {
        let rows = d.batch * d.rows();
        FwdBuffers { scores: empty(like, vec![rows * d.s], DType::F32), p: empty(like, vec![rows * d.s], dt), lse: empty(like, vec![rows], DType::F32), op: empty(like, vec![rows * d.hd], dt) }
    }
}

/// Queue the forward products (module docs) on `blas`'s stream: S = (1/√hd)·q·kᵀ per
/// causal block, the softmax kernel (P and L), O = P·v per block. Addresses: q reordered
/// [B·KV, S, G, hd], k and v [B·KV, S, hd], then S, P, L and O of [`FwdBuffers`].
///
/// # Safety
/// Every address must be a live buffer of the size [`FwdBuffers::new`] and the layouts above
/// give for `d` and `dt`.
unsafe fn forward_products(blas: &mut Blas, d: Dims, dt: DType, [pqp, pk, pv, mut ps, mut pp, mut pl, pop]: [u64; 7]) {
    let (rows, s, hd) = (d.rows(), d.s, d.hd);
    let (e, e32) = (dt.size() as u64, 4u64);
    let scale = 1.0 / (hd as f32).sqrt();
    let f = blas.kernels().softmax_fwd[variant(dt)];
    let (mut n, mut g, mut cs) = (s as i32, d.g as i32, block_len(s) as i32);
    let (kmat, vmat) = (Mat { ptr: pk, ld: hd, stride: s * hd }, Mat { ptr: pv, ld: hd, stride: s * hd });
    unsafe {
        for &(p0, np) in &d.blocks() {
            let (r0, nr, keys) = ((p0 * d.g) as u64, np * d.g, p0 + np);
            let a = Mat { ptr: pqp + r0 * hd as u64 * e, ld: hd, stride: rows * hd };
            let c = Mat { ptr: ps + r0 * s as u64 * e32, ld: s, stride: rows * s };
            blas.gemm_at((dt, DType::F32), (false, true), (nr, keys, hd), d.batch, (a, kmat, c), scale, 0.0);
        }
        blas.launch("attention softmax", f, (d.batch * rows) as u32, BLOCK, &mut args![ps, pp, pl, n, g, cs]);
        for &(p0, np) in &d.blocks() {
            let (r0, nr, keys) = ((p0 * d.g) as u64, np * d.g, p0 + np);
            let a = Mat { ptr: pp + r0 * s as u64 * e, ld: s, stride: rows * s };
            let c = Mat { ptr: pop + r0 * hd as u64 * e, ld: hd, stride: rows * hd };
            blas.gemm_at((dt, dt), (false, false), (nr, hd, keys), d.batch, (a, vmat, c), 1.0, 0.0);
        }
    }
}

/// The scratch of one backward pass's products: S and dP (f32), P and dS (dt), each
/// [B·KV·G·S, S], and dO and dq in the reordered layout [B·KV, S·G, hd].
struct BwdBuffers {
    /// S, f32 (unused placeholder when P was kept).
    scores: Prim,
    /// dP, f32.
    dp: Prim,
    /// P, operands' dtype (the kept one, or written here).
    p: Prim,
    /// dS, operands' dtype.
    ds: Prim,
    /// dO in the reordered layout.
    dop: Prim,
    /// dq in the reordered layout.
    dqp: Prim,
    /// Whether `p` is the P the forward pass kept (then `scores` is an unused 1-element
    /// placeholder).
    kept: bool,
}

impl BwdBuffers {
    /// The buffers, with `kept` the P the forward pass kept, if it did.
    fn new(like: &Prim, d: Dims, dt: DType, kept: Option<Prim>) -> Self {
        let rows = d.batch * d.rows();
        let sq = |dt| empty(like, vec![rows * d.s], dt);
        let (scores, p, kept) = match kept {
            Some(p) => (empty(like, vec![1], DType::F32), p, true),
            None => (sq(DType::F32), sq(dt), false),
        };
        BwdBuffers { scores, dp: sq(DType::F32), p, ds: sq(dt), dop: empty(like, vec![rows * d.hd], dt), dqp: empty(like, vec![rows * d.hd], dt), kept }
    }
}

/// Queue the backward products (module docs) on `blas`'s stream: S (unless `kept`: P is
/// the forward pass's) and dP per block, the softmax-gradient kernel (P and dS; dS alone
/// from the kept P), dv = Pᵀ·dO and dk = dSᵀ·q summed over the blocks, dq
/// = dS·k. Addresses: q reordered, k, v, L (as saved by the forward pass), dO reordered
/// [B·KV, S, G, hd], S, dP, P, dS, then the outputs dq (reordered), dk, dv.
///
/// # Safety
/// As [`forward_products`], with [`BwdBuffers::new`]'s sizes.
unsafe fn backward_products(blas: &mut Blas, d: Dims, dt: DType, kept: bool, [pqp, pk, pv, mut pl, pdop, mut ps, mut pdp, mut pp, mut pds, pdqp, pdk, pdv]: [u64; 12]) {
    let (rows, s, hd) = (d.rows(), d.s, d.hd);
    let (e, e32) = (dt.size() as u64, 4u64);
    let f = blas.kernels().softmax_bwd[variant(dt)];
    let (mut n, mut g, mut cs, mut sc) = (s as i32, d.g as i32, block_len(s) as i32, 1.0 / (hd as f32).sqrt());
    let scale = sc;
    let kv_mat = |ptr: u64| Mat { ptr, ld: hd, stride: s * hd };
    let row_mat = |ptr: u64, r0: u64, esz: u64| Mat { ptr: ptr + r0 * hd as u64 * esz, ld: hd, stride: rows * hd };
    let sq_mat = |ptr: u64, r0: u64, esz: u64| Mat { ptr: ptr + r0 * s as u64 * esz, ld: s, stride: rows * s };
    let blocks = d.blocks();
    unsafe {
        for &(p0, np) in &blocks {
            let (r0, nr, keys) = ((p0 * d.g) as u64, np * d.g, p0 + np);
            if !kept {
                blas.gemm_at((dt, DType::F32), (false, true), (nr, keys, hd), d.batch, (row_mat(pqp, r0, e), kv_mat(pk), sq_mat(ps, r0, e32)), scale, 0.0);
            }
            blas.gemm_at((dt, DType::F32), (false, true), (nr, keys, hd), d.batch, (row_mat(pdop, r0, e), kv_mat(pv), sq_mat(pdp, r0, e32)), 1.0, 0.0);
        }
        if kept {
            let f = blas.kernels().softmax_bwd_p[variant(dt)];
            blas.launch("attention softmax backward", f, (d.batch * rows) as u32, BLOCK, &mut args![pp, pdp, pds, n, g, cs, sc]);
        } else {
            blas.launch("attention softmax backward", f, (d.batch * rows) as u32, BLOCK, &mut args![ps, pdp, pl, pp, pds, n, g, cs, sc]);
        }
        // dv = Pᵀ·dO and dk = dSᵀ·q sum over the rows of every block: the last block
        // (all keys) writes, the earlier ones (fewer keys) add.
        for (i, &(p0, np)) in blocks.iter().enumerate().rev() {
            let (r0, nr, keys) = ((p0 * d.g) as u64, np * d.g, p0 + np);
            let beta = if i + 1 == blocks.len() { 0.0 } else { 1.0 };
            blas.gemm_at((dt, dt), (true, false), (keys, hd, nr), d.batch, (sq_mat(pp, r0, e), row_mat(pdop, r0, e), kv_mat(pdv)), 1.0, beta);
            blas.gemm_at((dt, dt), (true, false), (keys, hd, nr), d.batch, (sq_mat(pds, r0, e), row_mat(pqp, r0, e), kv_mat(pdk)), 1.0, beta);
        }
        for &(p0, np) in &blocks {
            let (r0, nr, keys) = ((p0 * d.g) as u64, np * d.g, p0 + np);
            blas.gemm_at((dt, dt), (false, false), (nr, hd, keys), d.batch, (sq_mat(pds, r0, e), kv_mat(pk), row_mat(pdqp, r0, e)), 1.0, 0.0);
        }
    }
}

/// Forward pass (module docs): O [B, H, S, hd] in q's dtype, and what backward needs.
fn forward(q: Prim, k: Prim, v: Prim, keep: bool) -> (Prim, Saved) {
    let c = burn_cubecl::kernel::into_contiguous;
    let (q, k, v) = (c(q), c(k), c(v));
    let (sq, kvh) = (q.shape(), k.shape()[1]);
    let d = Dims { batch: sq[0] * kvh, g: sq[1] / kvh, s: sq[2], hd: sq[3] };
    let dt = q.dtype;
    let qp = empty(&q, vec![sq[0], kvh, d.s, d.g, d.hd], dt);
    let w = FwdBuffers::new(&q, d, dt);
    let o = empty(&q, sq.clone(), dt);
    on_stream("attention forward", &[&q, &k, &v, &qp, &w.scores, &w.p, &w.lse, &w.op, &o], |blas, ptr| {
        let [pq, pk, pv, pqp, ps, pp, pl, pop, po] = <[u64; 9]>::try_from(ptr).expect("9 tensors");
        unsafe {
            swap_mid(blas, dt, (pq, pqp), [d.batch, d.g, d.s, d.hd]);
            forward_products(blas, d, dt, [pqp, pk, pv, ps, pp, pl, pop]);
            swap_mid(blas, dt, (pop, po), [d.batch, d.s, d.g, d.hd]);
        }
    });
    CALLS.fetch_add(1, Ordering::Relaxed);
    (o, Saved { q: qp, k, v, lse: w.lse, p: keep.then_some(w.p) })
}

/// The [`Dims`] of a saved forward pass (q reordered: [B, KV, S, G, hd]).
fn saved_dims(qp: &Prim) -> Dims {
    let sp = qp.shape();
    Dims { batch: sp[0] * sp[1], g: sp[3], s: sp[2], hd: sp[4] }
}

/// Backward pass (module docs): [dq, dk, dv] in q's dtype for dO [B, H, S, hd].
fn backward(saved: Saved, d_o: Prim) -> [Prim; 3] {
    let Saved { q: qp, k, v, lse, p: kept } = saved;
    let dt = qp.dtype;
    let d_o = super::fused::as_dtype(d_o, dt);
    let d = saved_dims(&qp);
    let w = BwdBuffers::new(&qp, d, dt, kept);
    let dq = empty(&qp, d_o.shape(), dt);
    let dk = empty(&k, k.shape(), dt);
    let dv = empty(&v, v.shape(), dt);
    on_stream("attention backward", &[&qp, &k, &v, &lse, &d_o, &w.dop, &w.scores, &w.dp, &w.p, &w.ds, &w.dqp, &dq, &dk, &dv], |blas, ptr| {
        let [pqp, pk, pv, pl, pdo, pdop, ps, pdp, pp, pds, pdqp, pdq, pdk, pdv] = <[u64; 14]>::try_from(ptr).expect("14 tensors");
        unsafe {
            swap_mid(blas, dt, (pdo, pdop), [d.batch, d.g, d.s, d.hd]);
            backward_products(blas, d, dt, w.kept, [pqp, pk, pv, pl, pdop, ps, pdp, pp, pds, pdqp, pdk, pdv]);
            swap_mid(blas, dt, (pdqp, pdq), [d.batch, d.s, d.g, d.hd]);
        }
    });
    [dq, dk, dv]
}

/// Queue `bagel_qkv_split` or `bagel_qkv_merge` (`merge`) over the `total` elements of the
/// packed side, for the head counts of `heads` (H, KV), S positions and head dim hd.
///
/// # Safety
/// `ptrs` (in the kernel's parameter order) must be live buffers of the packed and split
/// layouts' sizes.
unsafe fn split_or_merge(blas: &mut Blas, merge: bool, dt: DType, ptrs: [u64; 6], (s, (h, kv), hd): (usize, (usize, usize), usize), total: usize) {
    let f = if merge { blas.kernels().qkv_merge[variant(dt)] } else { blas.kernels().qkv_split[variant(dt)] };
    let [mut p0, mut p1, mut p2, mut p3, mut p4, mut p5] = ptrs;
    let (mut s, mut h, mut kv, mut hd, mut total) = (s as i32, h as i32, kv as i32, hd as i32, total as u64);
    let grid = total.div_ceil(BLOCK as u64).clamp(1, 1 << 20) as u32;
    let what = if merge { "attention qkv merge" } else { "attention qkv split" };
    unsafe { blas.launch(what, f, grid, BLOCK, &mut args![p0, p1, p2, p3, p4, p5, s, h, kv, hd, total]) };
}

/// Packed forward pass ([`attention_packed`]): x [B, S, (H + 2·KV)·hd] → O [B, S, H·hd].
fn forward_packed(op: &AttentionPacked, x: Prim) -> (Prim, Saved) {
    let x = burn_cubecl::kernel::into_contiguous(x);
    let sx = x.shape();
    let (b, s, (h, kvh)) = (sx[0], sx[1], (op.heads, op.kv_heads));
    let hd = sx[2] / (h + 2 * kvh);
    let d = Dims { batch: b * kvh, g: h / kvh, s, hd };
    let dt = x.dtype;
    let qp = empty(&x, vec![b, kvh, s, d.g, hd], dt);
    let (k, v) = (empty(&x, vec![b, kvh, s, hd], dt), empty(&x, vec![b, kvh, s, hd], dt));
    let w = FwdBuffers::new(&x, d, dt);
    let o = empty(&x, vec![b, s, h * hd], dt);
    on_stream("attention forward", &[&x, &op.cos, &op.sin, &qp, &k, &v, &w.scores, &w.p, &w.lse, &w.op, &o], |blas, ptr| {
        let [px, pc, psn, pqp, pk, pv, ps, pp, pl, pop, po] = <[u64; 11]>::try_from(ptr).expect("11 tensors");
        unsafe {
            split_or_merge(blas, false, dt, [px, pc, psn, pqp, pk, pv], (s, (h, kvh), hd), sx.num_elements());
            forward_products(blas, d, dt, [pqp, pk, pv, ps, pp, pl, pop]);
            // [B, KV, S, G·hd] → [B, S, KV, G·hd] = [B, S, H·hd].
            swap_mid(blas, dt, (pop, po), [b, kvh, s, d.g * hd]);
        }
    });
    CALLS.fetch_add(1, Ordering::Relaxed);
    (o, Saved { q: qp, k, v, lse: w.lse, p: op.keep.then_some(w.p) })
}

/// Packed backward pass: d x [B, S, (H + 2·KV)·hd] for dO [B, S, H·hd].
fn backward_packed(op: &AttentionPacked, saved: Saved, d_o: Prim) -> Prim {
    let Saved { q: qp, k, v, lse, p: kept } = saved;
    let dt = qp.dtype;
    let d_o = super::fused::as_dtype(d_o, dt);
    let d = saved_dims(&qp);
    let (b, kvh, h) = (qp.shape()[0], op.kv_heads, op.heads);
    let w = BwdBuffers::new(&qp, d, dt, kept);
    let (dk, dv) = (empty(&k, k.shape(), dt), empty(&v, v.shape(), dt));
    let dx = empty(&qp, vec![b, d.s, (h + 2 * kvh) * d.hd], dt);
    on_stream("attention backward", &[&qp, &k, &v, &lse, &d_o, &w.dop, &w.scores, &w.dp, &w.p, &w.ds, &w.dqp, &dk, &dv, &op.cos, &op.sin, &dx], |blas, ptr| {
        let [pqp, pk, pv, pl, pdo, pdop, ps, pdp, pp, pds, pdqp, pdk, pdv, pc, psn, pdx] = <[u64; 16]>::try_from(ptr).expect("16 tensors");
        unsafe {
            // [B, S, KV, G·hd] → [B, KV, S, G·hd].
            swap_mid(blas, dt, (pdo, pdop), [b, d.s, kvh, d.g * d.hd]);
            backward_products(blas, d, dt, w.kept, [pqp, pk, pv, pl, pdop, ps, pdp, pp, pds, pdqp, pdk, pdv]);
            split_or_merge(blas, true, dt, [pdqp, pdk, pdv, pc, psn, pdx], (d.s, (h, kvh), d.hd), b * d.s * (h + 2 * kvh) * d.hd);
        }
    });
    dx
}

/// The packed op for [`super::fused::run`]: RoPE tables (f32 [S, hd], constants) and head
/// counts.
#[derive(Clone, Debug)]
struct AttentionPacked {
    cos: Prim,
    sin: Prim,
    heads: usize,
    kv_heads: usize,
    /// Whether forward keeps P for backward ([`keep_p`], and not under checkpointing).
    keep: bool,
}

impl super::fused::Fused<1> for AttentionPacked {
    type Saved = Saved;

    fn forward(&self, [x]: [Prim; 1]) -> (Prim, Saved) {
        forward_packed(self, x)
    }

    fn backward(&self, saved: Saved, d_o: Prim) -> [Prim; 1] {
        [backward_packed(self, saved, d_o)]
    }
}

/// Whether [`attention_packed`] runs for backend `B` on x [B, S, (H + 2·KV)·hd] of dtype
/// `dt` with `heads` H and `kv_heads` KV: one of this crate's CUDA backends with the path
/// on (`BAGEL_CUBLAS`, and `BAGEL_PACKED` unset or not `0`), KV dividing H, hd even, bf16
/// or f32, and sizes the kernels' 32-bit indices and grids take.
pub(crate) fn packed_fits<B: Backend>([b, s, w]: [usize; 3], dt: DType, heads: usize, kv_heads: usize) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| !std::env::var("BAGEL_PACKED").is_ok_and(|v| v == "0"));
    let hd = if heads + 2 * kv_heads > 0 { w / (heads + 2 * kv_heads) } else { 0 };
    on && kind::<B>().is_some()
        && kv_heads > 0
        && heads % kv_heads == 0
        && hd > 0
        && hd % 2 == 0
        && w == (heads + 2 * kv_heads) * hd
        && b * s > 0
        && b * heads * s <= i32::MAX as usize
        && matches!(dt, DType::BF16 | DType::F32)
}

/// Causal grouped-query attention on one linear layer's packed q/k/v output, with RoPE:
/// x [B, S, (H + 2·KV)·hd] holds per position the H query heads, then the KV key heads,
/// then the KV value heads (the layout of `[W_q; W_k; W_v]` stacked by rows); RoPE (HF
/// rotate-half, f32 tables `cos`, `sin` [S, hd]) is applied to the queries and keys, then
/// the attention of [`attention`]. Returns [B, S, H·hd] (heads merged, as the output
/// projection reads it) in x's dtype; the gradient comes back packed like x. The split,
/// RoPE and the reorders are kernels inside the op's two [`on_stream`] sessions, so the
/// layer's q/k/v projection is one GEMM each way and one cast of the stacked weight, where
/// separate projections take three, and RoPE and the transposes have no launches of their
/// own.
///
/// # Panics
/// Unless [`packed_fits`] holds for x's shape and dtype.
pub(crate) fn attention_packed<B: Backend>(x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>, heads: usize, kv_heads: usize) -> Tensor<B, 3> {
    assert!(packed_fits::<B>(x.dims(), x.dtype(), heads, kv_heads), "attention_packed: x {:?} {:?} with {heads} / {kv_heads} heads", x.dims(), x.dtype());
    let [_, s, w] = x.dims();
    let hd = w / (heads + 2 * kv_heads);
    assert!(cos.dims() == [s, hd] && sin.dims() == [s, hd] && cos.dtype() == DType::F32 && sin.dtype() == DType::F32, "attention_packed: RoPE tables {:?} {:?} for S = {s}, hd = {hd} (f32)", cos.dims(), sin.dims());
    let kind = kind::<B>().expect("checked by packed_fits");
    let op = AttentionPacked { cos: super::fused::constant(kind, cos), sin: super::fused::constant(kind, sin), heads, kv_heads, keep: keep_p() && kind == Kind::Plain };
    super::fused::run(kind, op, [x])
}

/// The op for [`super::fused::run`].
#[derive(Clone, Debug)]
struct Attention {
    /// Whether forward keeps P for backward ([`keep_p`], and not under checkpointing).
    keep: bool,
}

impl super::fused::Fused<3> for Attention {
    type Saved = Saved;

    fn forward(&self, [q, k, v]: [Prim; 3]) -> (Prim, Saved) {
        forward(q, k, v, self.keep)
    }

    fn backward(&self, saved: Saved, d_o: Prim) -> [Prim; 3] {
        backward(saved, d_o)
    }
}

/// Causal grouped-query attention softmax(q·kᵀ/√hd + mask)·v (module docs) for q
/// [B, H, S, hd], k and v [B, KV, S, hd] with KV dividing H, all bf16 or all f32; returns
/// [B, H, S, hd] in that dtype. Runs as this module's op when `B` is one of this crate's
/// CUDA backends and the path is on (`BAGEL_CUBLAS`, as the GEMMs); `Err` with the inputs
/// handed back for the model's composed attention otherwise.
#[allow(clippy::type_complexity)]
pub(crate) fn attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let ([b, h, s, hd], dk) = (q.dims(), k.dims());
    let fits = dk == v.dims()
        && dk[0] == b
        && dk[2] == s
        && dk[3] == hd
        && dk[1] > 0
        && h % dk[1] == 0
        && b * h * s * hd > 0
        && (b * h * s) <= i32::MAX as usize
        && q.dtype() == k.dtype()
        && k.dtype() == v.dtype()
        && matches!(q.dtype(), DType::BF16 | DType::F32);
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err((q, k, v));
    };
    Ok(super::fused::run(kind, Attention { keep: keep_p() && kind == Kind::Plain }, [q, k, v]))
}

#[cfg(test)]
mod tests {
    //! Run as the GEMM tests (parent module): on the GPU machine, the test binary with
    //! `cuda_ops --nocapture`; without a device they say so and pass.
    use super::super::tests::{bf16, gpu, random, rel};
    use super::*;
    use burn::tensor::{FloatDType, TensorData};

    /// Causal GQA attention in f64: (O, dq, dk, dv) for row-major q [B, H, S, D],
    /// k, v [B, KV, S, D] and upstream gradient dO [B, H, S, D] (loss Σ O∘dO), written
    /// from the definitions (softmax Jacobian dS = P∘(dP − Σ P∘dP)), loop by loop.
    #[allow(clippy::type_complexity)]
    pub(crate) fn attention_f64(q: &[f32], k: &[f32], v: &[f32], d_o: &[f32], [b, h, kv, s, d]: [usize; 5]) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let scale = 1.0 / (d as f64).sqrt();
        let (mut o, mut dq) = (vec![0f64; b * h * s * d], vec![0f64; b * h * s * d]);
        let (mut dk, mut dv) = (vec![0f64; b * kv * s * d], vec![0f64; b * kv * s * d]);
        let qi = |bb: usize, hh: usize, i: usize| ((bb * h + hh) * s + i) * d;
        let ki = |bb: usize, kh: usize, j: usize| ((bb * kv + kh) * s + j) * d;
        for bb in 0..b {
            for hh in 0..h {
                let kh = hh / (h / kv);
                for i in 0..s {
                    let dot = |x: &[f32], xo: usize, y: &[f32], yo: usize| (0..d).map(|t| x[xo + t] as f64 * y[yo + t] as f64).sum::<f64>();
                    let sc: Vec<f64> = (0..=i).map(|j| dot(q, qi(bb, hh, i), k, ki(bb, kh, j)) * scale).collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    let p: Vec<f64> = sc.iter().map(|x| (x - m).exp() / z).collect();
                    let dp: Vec<f64> = (0..=i).map(|j| dot(d_o, qi(bb, hh, i), v, ki(bb, kh, j))).collect();
                    let sum: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for j in 0..=i {
                        let ds = p[j] * (dp[j] - sum) * scale;
                        for t in 0..d {
                            o[qi(bb, hh, i) + t] += p[j] * v[ki(bb, kh, j) + t] as f64;
                            dq[qi(bb, hh, i) + t] += ds * k[ki(bb, kh, j) + t] as f64;
                            dk[ki(bb, kh, j) + t] += ds * q[qi(bb, hh, i) + t] as f64;
                            dv[ki(bb, kh, j) + t] += p[j] * d_o[qi(bb, hh, i) + t] as f64;
                        }
                    }
                }
            }
        }
        (o, dq, dk, dv)
    }

    /// The f64 reference against burn's CPU backend with autodiff (f32: repeat_kv,
    /// q·kᵀ/√d + mask, softmax, ·v; gradients by burn's autodiff): the reference's
    /// derivation is checked independently. Runs anywhere the `cuda` feature's tests run.
    #[test]
    fn attention_f64_matches_burn_autodiff_on_cpu() {
        type Cpu = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
        let (b, h, kv, s, d) = (2, 4, 2, 7, 8);
        let dev = Default::default();
        let (qv, kvv, vv, dov) = (random(b * h * s * d, 31), random(b * kv * s * d, 32), random(b * kv * s * d, 33), random(b * h * s * d, 34));
        let t = |x: &[f32], heads: usize| Tensor::<Cpu, 4>::from_data(TensorData::new(x.to_vec(), [b, heads, s, d]), &dev).require_grad();
        let (q, k, v) = (t(&qv, h), t(&kvv, kv), t(&vv, kv));
        let rep = |x: Tensor<Cpu, 4>| x.unsqueeze_dim::<5>(2).repeat_dim(2, h / kv).reshape([b, h, s, d]);
        let mut mask = vec![0f32; s * s];
        for i in 0..s {
            for j in i + 1..s {
                mask[i * s + j] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::<Cpu, 2>::from_data(TensorData::new(mask, [s, s]), &dev).unsqueeze::<4>();
        let scores = q.clone().matmul(rep(k.clone()).swap_dims(2, 3)).div_scalar((d as f64).sqrt()) + mask;
        let o = burn::tensor::activation::softmax(scores, 3).matmul(rep(v.clone()));
        let g = (o.clone() * Tensor::<Cpu, 4>::from_data(TensorData::new(dov.clone(), [b, h, s, d]), &dev)).sum().backward();
        let flat = |x: Tensor<burn::backend::NdArray<f32>, 4>| -> Vec<f32> { x.into_data().to_vec().unwrap() };
        let (o_ref, dq_ref, dk_ref, dv_ref) = attention_f64(&qv, &kvv, &vv, &dov, [b, h, kv, s, d]);
        let e = [rel(&flat(o.inner()), &o_ref), rel(&flat(q.grad(&g).unwrap()), &dq_ref), rel(&flat(k.grad(&g).unwrap()), &dk_ref), rel(&flat(v.grad(&g).unwrap()), &dv_ref)];
        assert!(e.iter().all(|&x| x < 1e-5), "burn CPU vs f64 reference: {e:?}");
    }

    /// The op's output and three gradients against the f64 reference, on the GPU, in f32
    /// and bf16, at S = 300 (not a multiple of the block size; rows of 1 to 300 kept
    /// columns) with 8 query heads on 2 KV heads. Bounds (METHOD.md): f32 1e-5 (f32
    /// arithmetic throughout); bf16 1e-2 (P, dS and the outputs rounded to bf16, 2⁻⁹
    /// relative each). The reference takes the inputs as the op sees them (bf16-rounded
    /// under bf16).
    #[test]
    fn attention_matches_f64_reference() {
        let Some(device) = gpu() else { return };
        type Ad = Autodiff<Inner>;
        let (b, h, kv, s, d) = (2, 8, 2, 300, 64);
        let (qv, kvv, vv, dov) = (random(b * h * s * d, 41), random(b * kv * s * d, 42), random(b * kv * s * d, 43), random(b * h * s * d, 44));
        for (dtype, tol) in [(FloatDType::F32, 1e-5), (FloatDType::BF16, 1e-2)] {
            let seen = |x: &[f32]| if dtype == FloatDType::BF16 { bf16(x) } else { x.to_vec() };
            let (o_ref, dq_ref, dk_ref, dv_ref) = attention_f64(&seen(&qv), &seen(&kvv), &seen(&vv), &seen(&dov), [b, h, kv, s, d]);
            let t = |x: &[f32], heads: usize| Tensor::<Ad, 4>::from_data(TensorData::new(x.to_vec(), [b, heads, s, d]), &device).require_grad();
            let (q, k, v) = (t(&qv, h), t(&kvv, kv), t(&vv, kv));
            // `Ok` only from the fused op (a process-wide call counter would race with
            // the other device tests on parallel threads).
            let o = attention(q.clone().cast(dtype), k.clone().cast(dtype), v.clone().cast(dtype)).ok().expect("fused path taken");
            let up = Tensor::<Ad, 4>::from_data(TensorData::new(dov.clone(), [b, h, s, d]), &device).cast(dtype);
            let g = (o.clone() * up).cast(FloatDType::F32).sum().backward();
            let flat = |x: Tensor<Inner, 4>| -> Vec<f32> { x.cast(FloatDType::F32).into_data().to_vec().unwrap() };
            let e = [rel(&flat(o.inner()), &o_ref), rel(&flat(q.grad(&g).unwrap()), &dq_ref), rel(&flat(k.grad(&g).unwrap()), &dk_ref), rel(&flat(v.grad(&g).unwrap()), &dv_ref)];
            eprintln!("attention {dtype:?}: ‖err‖/‖ref‖ o {:.1e}, dq {:.1e}, dk {:.1e}, dv {:.1e}", e[0], e[1], e[2], e[3]);
            assert!(e.iter().all(|&x| x < tol), "{dtype:?}: {e:?} above {tol}");
        }
    }

    /// The packed op ([`attention_packed`]: RoPE, attention and the head merge from one
    /// [B, S, (H + 2·KV)·hd] input) against the unpacked ops it replaces, each tested above
    /// or in `fused` against an independent reference: the input split by `narrow`, the
    /// fused RoPE on q and k, [`attention`], the heads merged by burn's transpose. Output
    /// and the packed input's gradient (loss Σ O∘u), at S = 300 (3 causal blocks), 8 query
    /// heads on 2 KV heads. Bounds: f32 1e-5; bf16 1e-2 (METHOD.md; the same roundings on
    /// both sides, so both are expected far below).
    #[test]
    fn packed_attention_matches_unpacked_ops() {
        let Some(device) = gpu() else { return };
        type Ad = Autodiff<Inner>;
        let (b, h, kv, s, d) = (2, 8, 2, 300, 64);
        let w = (h + 2 * kv) * d;
        let (xv, uv) = (random(b * s * w, 71), random(b * s * h * d, 72));
        let (cos, sin) = crate::model::rope_tables::<Ad>(s, d, 1e4, &device);
        for (dtype, tol) in [(FloatDType::F32, 1e-5), (FloatDType::BF16, 1e-2)] {
            let x1 = Tensor::<Ad, 3>::from_data(TensorData::new(xv.clone(), [b, s, w]), &device).require_grad();
            let x2 = Tensor::<Ad, 3>::from_data(TensorData::new(xv.clone(), [b, s, w]), &device).require_grad();
            let u = Tensor::<Ad, 3>::from_data(TensorData::new(uv.clone(), [b, s, h * d]), &device).cast(dtype);
            let o1 = attention_packed(x1.clone().cast(dtype), cos.clone(), sin.clone(), h, kv);
            let xc = x2.clone().cast(dtype);
            let part = |lo: usize, heads: usize| xc.clone().narrow(2, lo * d, heads * d).reshape([b, s, heads, d]);
            let q = super::super::rope(part(0, h), cos.clone(), sin.clone()).ok().expect("fused RoPE");
            let k = super::super::rope(part(h, kv), cos.clone(), sin.clone()).ok().expect("fused RoPE");
            let v = part(h + kv, kv).swap_dims(1, 2);
            let o2 = attention(q, k, v).ok().expect("fused attention").swap_dims(1, 2).reshape([b, s, h * d]);
            let g1 = (o1.clone() * u.clone()).cast(FloatDType::F32).sum().backward();
            let g2 = (o2.clone() * u).cast(FloatDType::F32).sum().backward();
            let flat = |x: Tensor<Inner, 3>| -> Vec<f32> { x.cast(FloatDType::F32).into_data().to_vec().unwrap() };
            let wide = |v: Vec<f32>| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
            let e = [rel(&flat(o1.inner()), &wide(flat(o2.inner()))), rel(&flat(x1.grad(&g1).unwrap()), &wide(flat(x2.grad(&g2).unwrap())))];
            eprintln!("packed attention {dtype:?} vs unpacked ops: ‖err‖/‖ref‖ o {:.1e}, dx {:.1e}", e[0], e[1]);
            assert!(e.iter().all(|&x| x < tol), "{dtype:?}: {e:?} above {tol}");
        }
    }

}
