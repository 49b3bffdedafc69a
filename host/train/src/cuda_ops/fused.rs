//! Fused element-wise ops of the Llama block on the CUDA backend: RMSNorm, SwiGLU, RoPE and
//! the target log-probabilities, each one kernel forward and one backward, and the sum of
//! squares of gradient clipping (issue 7,
//! "fused RMSNorm/RoPE/SwiGLU, a chunked cross-entropy"), queued on CubeCL's own stream
//! ([`super::cube`]), and the autodiff harness ([`Fused`]) they and [`super::attention`]
//! share.
//!
//! Composed from burn ops, RMSNorm is six kernels forward (x², mean, +ε, √, ÷, ·w) and
//! about twice that backward, each a pass over the [B·S, hidden] f32 residual stream, and
//! autodiff keeps several of those intermediates per layer; RoPE is narrow, neg, cat and
//! three products on a transposed view; SwiGLU three; the loss a cast of the logits to
//! f32, a log-softmax and a gather over [B, S, V]. Here each is one pass each way (RMSNorm's
//! backward adds a two-pass column sum for dw), arithmetic in f32 whatever the storage
//! dtype, and the op keeps only its inputs (RMSNorm also the per-row 1/rms, the
//! log-probabilities the per-row log Σ exp, [rows] f32 each).
use super::attention::variant;
use super::*;
use burn::tensor::Int;

/// The fused kernels (CUDA C, compiled by CubeCL's NVRTC after [`super::attention::COMMON`]
/// and launched on CubeCL's stream, [`super::cube`]).
pub(super) const SRC: &str = r#"
/* Scalars arrive as 32-bit words in device memory (prm): ints as they are, floats by their bits. */
__device__ __forceinline__ float bagel_f(const unsigned* prm, int i) { return __uint_as_float(prm[i]); }
__device__ __forceinline__ unsigned long long bagel_u64(const unsigned* prm, int i) { return (unsigned long long)prm[i] | ((unsigned long long)prm[i + 1] << 32); }
/* RMSNorm forward, one block per row of x [rows, h] (f32): y = x * r * w in T, rstd[row] = r = 1/sqrt(mean(x^2) + eps). prm: h, eps. */
template <typename T>
__device__ void bagel_rmsnorm_fwd(const float* __restrict__ x, const float* __restrict__ w, T* __restrict__ y, float* __restrict__ rstd, const unsigned* __restrict__ prm) {
  __shared__ float sh[32];
  const int h = (int)prm[0];
  const float eps = bagel_f(prm, 1);
  const size_t row = blockIdx.x;
  const float* xr = x + row * (size_t)h;
  T* yr = y + row * (size_t)h;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < h; c += blockDim.x) { const float v = xr[c]; ss += v * v; }
  ss = bagel_block_sum(ss, sh);
  const float r = rsqrtf(ss / (float)h + eps);
  for (int c = threadIdx.x; c < h; c += blockDim.x) bagel_store(yr + c, xr[c] * r * w[c]);
  if (threadIdx.x == 0) rstd[row] = r;
}
/* RMSNorm backward, one block per row: g = dy * w, dx = r*g - r^3 * x * sum(g*x) / h (f32); dwp[row] = dy * x * r (the row's share of dw). prm: h. */
template <typename T>
__device__ void bagel_rmsnorm_bwd(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ rstd, const T* __restrict__ dy,
                                  float* __restrict__ dx, float* __restrict__ dwp, const unsigned* __restrict__ prm) {
  __shared__ float sh[32];
  const int h = (int)prm[0];
  const size_t row = blockIdx.x;
  const float* xr = x + row * (size_t)h;
  const T* dyr = dy + row * (size_t)h;
  const float r = rstd[row];
  float c = 0.0f;
  for (int j = threadIdx.x; j < h; j += blockDim.x) c += bagel_load(dyr + j) * w[j] * xr[j];
  c = bagel_block_sum(c, sh);
  const float k = r * r * r * c / (float)h;
  for (int j = threadIdx.x; j < h; j += blockDim.x) {
    const float d = bagel_load(dyr + j);
    dx[row * (size_t)h + j] = r * d * w[j] - k * xr[j];
    dwp[row * (size_t)h + j] = d * xr[j] * r;
  }
}
/* Column sums of a [rows, h] (f32), deterministic, in two launches. Partial: grid (ceil(h/32), chunks), 256 threads = 32 columns x 8 row lanes;
   part[chunk, col] = sum of rows chunk*per .. (chunk+1)*per. prm: rows, h, per. Final: out[col] = sum over chunks of part. prm: chunks, h. */
extern "C" __global__ void bagel_colsum_partial(const float* __restrict__ a, float* __restrict__ part, const unsigned* __restrict__ prm) {
  __shared__ float sh[8][33];
  const unsigned rows = prm[0], h = prm[1], per = prm[2];
  const unsigned tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const unsigned col = blockIdx.x * 32 + tx;
  const unsigned r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
  float s = 0.0f;
  if (col < h) for (unsigned r = r0 + ty; r < r1; r += 8) s += a[(size_t)r * h + col];
  sh[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && col < h) {
    float t = 0.0f;
    for (int i = 0; i < 8; i++) t += sh[i][tx];
    part[(size_t)blockIdx.y * h + col] = t;
  }
}
extern "C" __global__ void bagel_colsum_final(const float* __restrict__ part, float* __restrict__ out, const unsigned* __restrict__ prm) {
  const unsigned chunks = prm[0], h = prm[1];
  const unsigned col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= h) return;
  float t = 0.0f;
  for (unsigned c = 0; c < chunks; c++) t += part[(size_t)c * h + col];
  out[col] = t;
}
/* SwiGLU: h = silu(a) * b; da = dh * b * s * (1 + a * (1 - s)), db = dh * silu(a), s = sigmoid(a). prm: n (2 words). */
template <typename T>
__device__ void bagel_swiglu_fwd(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ h, const unsigned* __restrict__ prm) {
  const unsigned long long n = bagel_u64(prm, 0);
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
    const float av = bagel_load(a + i);
    bagel_store(h + i, av / (1.0f + expf(-av)) * bagel_load(b + i));
  }
}
template <typename T>
__device__ void bagel_swiglu_bwd(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ dh, T* __restrict__ da, T* __restrict__ db, const unsigned* __restrict__ prm) {
  const unsigned long long n = bagel_u64(prm, 0);
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
    const float av = bagel_load(a + i), d = bagel_load(dh + i);
    const float s = 1.0f / (1.0f + expf(-av));
    bagel_store(da + i, d * bagel_load(b + i) * s * (1.0f + av * (1.0f - s)));
    bagel_store(db + i, d * av * s);
  }
}
/* RoPE (HF rotate-half) with the head transpose: x [B, S, H, D] -> y [B, H, S, D],
   y = x * cos + rot(x) * sin, rot(x)_d = -x_{d+D/2} (d < D/2), x_{d-D/2} (d >= D/2); cos, sin [S, D] f32. prm: S, H, D, n (2 words). */
template <typename T>
__device__ void bagel_rope_fwd(const T* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn, T* __restrict__ y, const unsigned* __restrict__ prm) {
  const int S = (int)prm[0], H = (int)prm[1], D = (int)prm[2];
  const unsigned long long n = bagel_u64(prm, 3);
  const int half = D / 2;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
    const int d = (int)(i % D);
    unsigned long long t = i / D;
    const int s = (int)(t % S); t /= S;
    const int hh = (int)(t % H);
    const unsigned long long b = t / H;
    const T* xr = x + ((b * S + s) * H + hh) * D;
    const float rot = d < half ? -bagel_load(xr + d + half) : bagel_load(xr + d - half);
    bagel_store(y + i, bagel_load(xr + d) * cs[s * D + d] + rot * sn[s * D + d]);
  }
}
/* RoPE backward: dy [B, H, S, D] -> dx [B, S, H, D]; dx_d = dy_d cos_d + dy_{d+D/2} sin_{d+D/2} (d < D/2), dy_d cos_d - dy_{d-D/2} sin_{d-D/2} (d >= D/2). prm as forward. */
template <typename T>
__device__ void bagel_rope_bwd(const T* __restrict__ dy, const float* __restrict__ cs, const float* __restrict__ sn, T* __restrict__ dx, const unsigned* __restrict__ prm) {
  const int S = (int)prm[0], H = (int)prm[1], D = (int)prm[2];
  const unsigned long long n = bagel_u64(prm, 3);
  const int half = D / 2;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
    const int d = (int)(i % D);
    unsigned long long t = i / D;
    const int hh = (int)(t % H); t /= H;
    const int s = (int)(t % S);
    const unsigned long long b = t / S;
    const T* dr = dy + ((b * H + hh) * S + s) * D;
    float v = bagel_load(dr + d) * cs[s * D + d];
    if (d < half) v += bagel_load(dr + d + half) * sn[s * D + d + half];
    else v -= bagel_load(dr + d - half) * sn[s * D + d - half];
    bagel_store(dx + i, v);
  }
}
/* Token log-probabilities, one block per row of logits [rows, v]: lse = log sum exp, logp = logits[target] - lse (0 for a target outside 0..v). prm: v. */
template <typename T>
__device__ void bagel_token_logp_fwd(const T* __restrict__ logits, const int* __restrict__ targets, float* __restrict__ logp, float* __restrict__ lse, const unsigned* __restrict__ prm) {
  __shared__ float sh[32];
  const int v = (int)prm[0];
  const size_t row = blockIdx.x;
  const T* lr = logits + row * (size_t)v;
  float m = bagel_neg_inf();
  for (int c = threadIdx.x; c < v; c += blockDim.x) m = fmaxf(m, bagel_load(lr + c));
  m = bagel_block_max(m, sh);
  float s = 0.0f;
  for (int c = threadIdx.x; c < v; c += blockDim.x) s += expf(bagel_load(lr + c) - m);
  s = bagel_block_sum(s, sh);
  if (threadIdx.x == 0) {
    const float L = m + logf(s);
    const int t = targets[row];
    lse[row] = L;
    logp[row] = (t >= 0 && t < v) ? bagel_load(lr + t) - L : 0.0f;
  }
}
/* dlogits = dlogp * (onehot(target) - softmax(logits)), per row; zero for a target outside 0..v. prm: v. */
template <typename T>
__device__ void bagel_token_logp_bwd(const T* __restrict__ logits, const int* __restrict__ targets, const float* __restrict__ lse,
                                     const float* __restrict__ dlogp, T* __restrict__ dlogits, const unsigned* __restrict__ prm) {
  const int v = (int)prm[0];
  const size_t row = blockIdx.x;
  const T* lr = logits + row * (size_t)v;
  T* dr = dlogits + row * (size_t)v;
  const int t = targets[row];
  const float g = (t >= 0 && t < v) ? dlogp[row] : 0.0f, L = lse[row];
  for (int c = threadIdx.x; c < v; c += blockDim.x) bagel_store(dr + c, g * ((c == t ? 1.0f : 0.0f) - expf(bagel_load(lr + c) - L)));
}
/* Sum of squares: part[at + block] = sum of x^2 over the block's grid-stride share (f32); then out[0] = sum of the parts. prm: n (2 words), at / parts. */
template <typename T>
__device__ void bagel_sumsq(const T* __restrict__ x, float* __restrict__ part, const unsigned* __restrict__ prm) {
  __shared__ float sh[32];
  const unsigned long long n = bagel_u64(prm, 0);
  float s = 0.0f;
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
    const float v = bagel_load(x + i);
    s += v * v;
  }
  s = bagel_block_sum(s, sh);
  if (threadIdx.x == 0) part[(size_t)prm[2] + blockIdx.x] = s;
}
extern "C" __global__ void bagel_sum_f32(const float* __restrict__ part, float* __restrict__ out, const unsigned* __restrict__ prm) {
  __shared__ float sh[32];
  const unsigned n = prm[0];
  float s = 0.0f;
  for (unsigned i = threadIdx.x; i < n; i += blockDim.x) s += part[i];
  s = bagel_block_sum(s, sh);
  if (threadIdx.x == 0) out[0] = s;
}
/* SwiGLU on one linear layer's packed gate/up output x [rows, 2F] (a = the first F columns, b = the last F):
   h [rows, F] = silu(a) * b; backward writes dx [rows, 2F] = [da, db] (formulas as bagel_swiglu_*). prm: F, n = rows * F (2 words). */
template <typename T>
__device__ void bagel_swiglu_packed_fwd(const T* __restrict__ x, T* __restrict__ h, const unsigned* __restrict__ prm) {
  const unsigned long long F = prm[0], n = bagel_u64(prm, 1);
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
    const T* xr = x + (i / F) * 2 * F + i % F;
    const float av = bagel_load(xr);
    bagel_store(h + i, av / (1.0f + expf(-av)) * bagel_load(xr + F));
  }
}
template <typename T>
__device__ void bagel_swiglu_packed_bwd(const T* __restrict__ x, const T* __restrict__ dh, T* __restrict__ dx, const unsigned* __restrict__ prm) {
  const unsigned long long F = prm[0], n = bagel_u64(prm, 1);
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
    const unsigned long long o = (i / F) * 2 * F + i % F;
    const float av = bagel_load(x + o), bv = bagel_load(x + o + F), d = bagel_load(dh + i);
    const float s = 1.0f / (1.0f + expf(-av));
    bagel_store(dx + o, d * bv * s * (1.0f + av * (1.0f - s)));
    bagel_store(dx + o + F, d * av * s);
  }
}
/* Row stacking with a dtype conversion: y = [x0; x1; x2] (n0, n1, n2 elements, each contiguous) in the output's dtype,
   and its gradient: d0, d1, d2 = the three ranges of dy. n2 = 0 stacks two. prm: n0, n1, n2 (2 words each). */
template <typename Tin, typename Tout>
__device__ void bagel_stack(const Tin* __restrict__ x0, const Tin* __restrict__ x1, const Tin* __restrict__ x2, Tout* __restrict__ y, const unsigned* __restrict__ prm) {
  const unsigned long long n0 = bagel_u64(prm, 0), n1 = bagel_u64(prm, 2), n = n0 + n1 + bagel_u64(prm, 4);
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x)
    bagel_store(y + i, i < n0 ? bagel_load(x0 + i) : i < n0 + n1 ? bagel_load(x1 + (i - n0)) : bagel_load(x2 + (i - n0 - n1)));
}
template <typename Tin, typename Tout>
__device__ void bagel_unstack(const Tin* __restrict__ dy, Tout* __restrict__ d0, Tout* __restrict__ d1, Tout* __restrict__ d2, const unsigned* __restrict__ prm) {
  const unsigned long long n0 = bagel_u64(prm, 0), n1 = bagel_u64(prm, 2), n = n0 + n1 + bagel_u64(prm, 4);
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x) {
    const float v = bagel_load(dy + i);
    if (i < n0) bagel_store(d0 + i, v);
    else if (i < n0 + n1) bagel_store(d1 + (i - n0), v);
    else bagel_store(d2 + (i - n0 - n1), v);
  }
}
#define BAGEL_STACK(tin, nin, tout, nout) \
  extern "C" __global__ void bagel_stack_##nin##_##nout(const tin* x0, const tin* x1, const tin* x2, tout* y, const unsigned* prm) { bagel_stack(x0, x1, x2, y, prm); } \
  extern "C" __global__ void bagel_unstack_##nin##_##nout(const tin* dy, tout* d0, tout* d1, tout* d2, const unsigned* prm) { bagel_unstack(dy, d0, d1, d2, prm); }
BAGEL_STACK(float, f32, unsigned short, bf16)
BAGEL_STACK(float, f32, float, f32)
BAGEL_STACK(unsigned short, bf16, float, f32)
BAGEL_STACK(unsigned short, bf16, unsigned short, bf16)
/* Residual add with the widening folded in: z = x + y (x, z f32; y bf16 or f32). prm: n (2 words). */
template <typename T>
__device__ void bagel_residual_add(const float* __restrict__ x, const T* __restrict__ y, float* __restrict__ z, const unsigned* __restrict__ prm) {
  const unsigned long long n = bagel_u64(prm, 0);
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n; i += (unsigned long long)blockDim.x * gridDim.x)
    z[i] = x[i] + bagel_load(y + i);
}
#define BAGEL_BOTH(name, args, call) \
  extern "C" __global__ void name##_bf16 args(unsigned short) { call; } \
  extern "C" __global__ void name##_f32 args(float) { call; }
#define A_NORM_F(T) (const float* x, const float* w, T* y, float* rstd, const unsigned* prm)
#define A_NORM_B(T) (const float* x, const float* w, const float* rstd, const T* dy, float* dx, float* dwp, const unsigned* prm)
#define A_GLU_F(T) (const T* a, const T* b, T* h, const unsigned* prm)
#define A_GLU_B(T) (const T* a, const T* b, const T* dh, T* da, T* db, const unsigned* prm)
#define A_RESID(T) (const float* x, const T* y, float* z, const unsigned* prm)
#define A_GLUP_F(T) (const T* x, T* h, const unsigned* prm)
#define A_GLUP_B(T) (const T* x, const T* dh, T* dx, const unsigned* prm)
#define A_ROPE_F(T) (const T* x, const float* cs, const float* sn, T* y, const unsigned* prm)
#define A_ROPE_B(T) (const T* dy, const float* cs, const float* sn, T* dx, const unsigned* prm)
#define A_LOGP_F(T) (const T* logits, const int* targets, float* logp, float* lse, const unsigned* prm)
#define A_LOGP_B(T) (const T* logits, const int* targets, const float* lse, const float* dlogp, T* dlogits, const unsigned* prm)
#define A_SUMSQ(T) (const T* x, float* part, const unsigned* prm)
BAGEL_BOTH(bagel_sumsq, A_SUMSQ, bagel_sumsq(x, part, prm))
BAGEL_BOTH(bagel_rmsnorm_fwd, A_NORM_F, bagel_rmsnorm_fwd(x, w, y, rstd, prm))
BAGEL_BOTH(bagel_rmsnorm_bwd, A_NORM_B, bagel_rmsnorm_bwd(x, w, rstd, dy, dx, dwp, prm))
BAGEL_BOTH(bagel_swiglu_fwd, A_GLU_F, bagel_swiglu_fwd(a, b, h, prm))
BAGEL_BOTH(bagel_swiglu_bwd, A_GLU_B, bagel_swiglu_bwd(a, b, dh, da, db, prm))
BAGEL_BOTH(bagel_residual_add, A_RESID, bagel_residual_add(x, y, z, prm))
BAGEL_BOTH(bagel_swiglu_packed_fwd, A_GLUP_F, bagel_swiglu_packed_fwd(x, h, prm))
BAGEL_BOTH(bagel_swiglu_packed_bwd, A_GLUP_B, bagel_swiglu_packed_bwd(x, dh, dx, prm))
BAGEL_BOTH(bagel_rope_fwd, A_ROPE_F, bagel_rope_fwd(x, cs, sn, y, prm))
BAGEL_BOTH(bagel_rope_bwd, A_ROPE_B, bagel_rope_bwd(dy, cs, sn, dx, prm))
BAGEL_BOTH(bagel_token_logp_fwd, A_LOGP_F, bagel_token_logp_fwd(logits, targets, logp, lse, prm))
BAGEL_BOTH(bagel_token_logp_bwd, A_LOGP_B, bagel_token_logp_bwd(logits, targets, lse, dlogp, dlogits, prm))
/* dtype conversion, 4 elements per thread (16-byte f32 / 8-byte bf16 accesses when both
   pointers are aligned, one by one otherwise and at the tail); f32 -> bf16 rounds to
   nearest even (bagel_store), bf16 -> f32 is exact. prm: n (2 words). */
extern "C" __global__ void bagel_cast_f32_bf16(const float* __restrict__ x, unsigned short* __restrict__ y, const unsigned* __restrict__ prm) {
  const unsigned long long n = (unsigned long long)prm[0] | ((unsigned long long)prm[1] << 32);
  const bool vec = (((unsigned long long)x & 15ull) == 0) && (((unsigned long long)y & 7ull) == 0);
  for (unsigned long long i = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) * 4ull; i < n; i += (unsigned long long)gridDim.x * blockDim.x * 4ull) {
    if (vec && i + 4 <= n) {
      const float4 v = *(const float4*)(x + i);
      unsigned short o[4];
      bagel_store(o + 0, v.x); bagel_store(o + 1, v.y); bagel_store(o + 2, v.z); bagel_store(o + 3, v.w);
      uint2 w;
      w.x = (unsigned)o[0] | ((unsigned)o[1] << 16);
      w.y = (unsigned)o[2] | ((unsigned)o[3] << 16);
      *(uint2*)(y + i) = w;
    } else {
      for (unsigned long long j = i; j < i + 4 && j < n; j++) bagel_store(y + j, x[j]);
    }
  }
}
extern "C" __global__ void bagel_cast_bf16_f32(const unsigned short* __restrict__ x, float* __restrict__ y, const unsigned* __restrict__ prm) {
  const unsigned long long n = (unsigned long long)prm[0] | ((unsigned long long)prm[1] << 32);
  const bool vec = (((unsigned long long)x & 7ull) == 0) && (((unsigned long long)y & 15ull) == 0);
  for (unsigned long long i = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) * 4ull; i < n; i += (unsigned long long)gridDim.x * blockDim.x * 4ull) {
    if (vec && i + 4 <= n) {
      const uint2 w = *(const uint2*)(x + i);
      float4 v;
      v.x = __uint_as_float(w.x << 16); v.y = __uint_as_float(w.x & 0xffff0000u);
      v.z = __uint_as_float(w.y << 16); v.w = __uint_as_float(w.y & 0xffff0000u);
      *(float4*)(y + i) = v;
    } else {
      for (unsigned long long j = i; j < i + 4 && j < n; j++) y[j] = bagel_load(x + j);
    }
  }
}
"#;

/// A custom op with `N` differentiable inputs (float primitives of [`Inner`]) and one
/// output, run as one autodiff node (compute-bound: never recomputed by checkpointing).
pub(super) trait Fused<const N: usize>: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// What backward needs, kept from forward.
    type Saved: Clone + Send + std::fmt::Debug + 'static;
    /// The output, and what backward needs.
    fn forward(&self, inputs: [Prim; N]) -> (Prim, Self::Saved);
    /// The gradients of the inputs, in order, for `dy` the gradient of the output.
    fn backward(&self, saved: Self::Saved, dy: Prim) -> [Prim; N];
}

/// The autodiff node of a [`Fused`] op.
#[derive(Debug)]
struct Node<Op>(Op);

impl<Op: Fused<N>, const N: usize> Backward<Inner, N> for Node<Op> {
    type State = Op::Saved;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let dy = grads.consume::<Inner>(&ops.node);
        let parents = ops.parents;
        for (parent, grad) in parents.into_iter().zip(self.0.backward(ops.state, dy)) {
            if let Some(node) = parent {
                grads.register::<Inner>(node.id, grad);
            }
        }
    }
}

/// `op` under autodiff with checkpoint strategy `C`.
fn run_autodiff<C: CheckpointStrategy, Op: Fused<N>, const N: usize>(op: Op, inputs: [FloatTensor<Autodiff<Inner, C>>; N]) -> FloatTensor<Autodiff<Inner, C>> {
    let nodes = inputs.each_ref().map(|t| t.node.clone());
    match Node(op.clone()).prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (y, saved) = op.forward(inputs.map(|t| t.primitive));
            prep.finish(saved, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(op.forward(inputs.map(|t| t.primitive)).0),
    }
}

/// Run `op` on `inputs` as backend `B`'s tensors, `B` being of [`Kind`] `kind`.
pub(super) fn run<B: Backend, Op: Fused<N>, const N: usize, const D: usize, const E: usize>(kind: Kind, op: Op, inputs: [Tensor<B, D>; N]) -> Tensor<B, E> {
    let prims = inputs.map(|t| t.into_primitive().tensor());
    let y: FloatTensor<B> = match kind {
        Kind::Plain => to(run_autodiff::<NoCheckpointing, _, N>(op, prims.map(to))),
        Kind::Balanced => to(run_autodiff::<BalancedCheckpointing, _, N>(op, prims.map(to))),
        Kind::Inference => to(op.forward(prims.map(to)).0),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The [`Inner`] primitive of a tensor that is not differentiated (a constant such as
/// RoPE's tables), for backend `B` of [`Kind`] `kind`.
pub(super) fn constant<B: Backend, const D: usize>(kind: Kind, t: Tensor<B, D>) -> Prim {
    let p = t.into_primitive().tensor();
    let p: Prim = match kind {
        // Both checkpoint strategies share this primitive type.
        Kind::Plain | Kind::Balanced => to::<FloatTensor<Autodiff<Inner>>, _>(p).primitive,
        Kind::Inference => to(p),
    };
    burn_cubecl::kernel::into_contiguous(p)
}

/// Blocks of [`BLOCK`] threads for a grid-stride loop over `n` elements (at most 2¹⁶).
fn grid(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32
}

/// Threads per block.
const BLOCK: u32 = 256;

/// Column sums of `a` [rows, h] (f32) as a tensor of `shape` (h elements): per-chunk
/// partial sums of 256 rows, then their sum, in a fixed order (deterministic).
fn column_sums(a: &Prim, rows: usize, h: usize, shape: Shape) -> Prim {
    const PER: usize = 256;
    let chunks = rows.div_ceil(PER).max(1);
    let part = empty(a, vec![chunks, h], DType::F32);
    let out = empty(a, shape, DType::F32);
    cube::launch("bagel_colsum_partial", (h.div_ceil(32) as u32, chunks as u32), 256, &[a, &part], &[rows as u32, h as u32, PER as u32]);
    cube::launch("bagel_colsum_final", (h.div_ceil(256) as u32, 1), 256, &[&part, &out], &[chunks as u32, h as u32]);
    out
}

/// `t` contiguous and of dtype `dt` (a cast only if it differs).
pub(super) fn as_dtype(t: Prim, dt: DType) -> Prim {
    let t = burn_cubecl::kernel::into_contiguous(t);
    if t.dtype == dt {
        t
    } else {
        burn_cubecl::kernel::cast(t, dt)
    }
}

/// RMSNorm (Zhang & Sennrich 2019): y = x / √(mean(x²) + ε) · w over the last dimension,
/// for x [..., h] f32 and w [h] f32; y in dtype `out` (the compute dtype, so the cast that
/// follows the norm under mixed precision is fused in).
#[derive(Clone, Debug)]
struct RmsNorm {
    eps: f32,
    out: DType,
}

impl Fused<2> for RmsNorm {
    /// x, w and the per-row 1/rms [rows] (f32).
    type Saved = (Prim, Prim, Prim);

    fn forward(&self, [x, w]: [Prim; 2]) -> (Prim, Self::Saved) {
        let (x, w) = (as_dtype(x, DType::F32), as_dtype(w, DType::F32));
        let shape = x.shape();
        let h = shape[shape.len() - 1];
        let rows = shape.num_elements() / h;
        let y = empty(&x, shape.clone(), self.out);
        let rstd = empty(&x, vec![rows], DType::F32);
        let name = ["bagel_rmsnorm_fwd_bf16", "bagel_rmsnorm_fwd_f32"][variant(self.out)];
        cube::launch(name, (rows as u32, 1), BLOCK, &[&x, &w, &y, &rstd], &[h as u32, self.eps.to_bits()]);
        (y, (x, w, rstd))
    }

    fn backward(&self, (x, w, rstd): Self::Saved, dy: Prim) -> [Prim; 2] {
        let dy = as_dtype(dy, self.out);
        let shape = x.shape();
        let h = shape[shape.len() - 1];
        let rows = shape.num_elements() / h;
        let dx = empty(&x, shape.clone(), DType::F32);
        let dwp = empty(&x, vec![rows, h], DType::F32);
        let name = ["bagel_rmsnorm_bwd_bf16", "bagel_rmsnorm_bwd_f32"][variant(self.out)];
        cube::launch(name, (rows as u32, 1), BLOCK, &[&x, &w, &rstd, &dy, &dx, &dwp], &[h as u32]);
        let dw = column_sums(&dwp, rows, h, w.shape());
        [dx, dw]
    }
}

/// SwiGLU's gate (Shazeer 2020): silu(a) · b for a, b of one shape, bf16 or f32 alike.
#[derive(Clone, Debug)]
struct SwiGlu;

impl Fused<2> for SwiGlu {
    type Saved = (Prim, Prim);

    fn forward(&self, [a, b]: [Prim; 2]) -> (Prim, Self::Saved) {
        let dt = a.dtype;
        let (a, b) = (as_dtype(a, dt), as_dtype(b, dt));
        let n = a.shape().num_elements();
        let y = empty(&a, a.shape(), dt);
        let name = ["bagel_swiglu_fwd_bf16", "bagel_swiglu_fwd_f32"][variant(dt)];
        cube::launch(name, (grid(n), 1), BLOCK, &[&a, &b, &y], &cube::words(n));
        (y, (a, b))
    }

    fn backward(&self, (a, b): Self::Saved, dy: Prim) -> [Prim; 2] {
        let dt = a.dtype;
        let dy = as_dtype(dy, dt);
        let n = a.shape().num_elements();
        let (da, db) = (empty(&a, a.shape(), dt), empty(&a, a.shape(), dt));
        let name = ["bagel_swiglu_bwd_bf16", "bagel_swiglu_bwd_f32"][variant(dt)];
        cube::launch(name, (grid(n), 1), BLOCK, &[&a, &b, &dy, &da, &db], &cube::words(n));
        [da, db]
    }
}

/// RoPE (Su et al. 2021, HF's rotate-half form) with the head transpose folded in:
/// x [B, S, H, D] → [B, H, S, D], y = x·cos + rotate_half(x)·sin, tables [S, D] f32.
#[derive(Clone, Debug)]
struct Rope {
    cos: Prim,
    sin: Prim,
}

impl Rope {
    /// Launch the forward (`bwd` false) or backward kernel from `src` to `dst` for the
    /// [B, S, H, D] side's shape `bshd`.
    fn launch(&self, bwd: bool, src: &Prim, dst: &Prim, bshd: [usize; 4]) {
        let [_, s, h, d] = bshd;
        let n: usize = bshd.iter().product();
        let names = if bwd { ["bagel_rope_bwd_bf16", "bagel_rope_bwd_f32"] } else { ["bagel_rope_fwd_bf16", "bagel_rope_fwd_f32"] };
        let [lo, hi] = cube::words(n);
        cube::launch(names[variant(src.dtype)], (grid(n), 1), BLOCK, &[src, &self.cos, &self.sin, dst], &[s as u32, h as u32, d as u32, lo, hi]);
    }
}

impl Fused<1> for Rope {
    /// The input's [B, S, H, D] shape and dtype (its gradient's).
    type Saved = ([usize; 4], DType);

    fn forward(&self, [x]: [Prim; 1]) -> (Prim, Self::Saved) {
        let dt = x.dtype;
        let x = as_dtype(x, dt);
        let sh = x.shape();
        let bshd = [sh[0], sh[1], sh[2], sh[3]];
        let y = empty(&x, vec![bshd[0], bshd[2], bshd[1], bshd[3]], dt);
        self.launch(false, &x, &y, bshd);
        (y, (bshd, dt))
    }

    fn backward(&self, (bshd, dt): Self::Saved, dy: Prim) -> [Prim; 1] {
        let dy = as_dtype(dy, dt);
        let dx = empty(&dy, bshd.to_vec(), dt);
        self.launch(true, &dy, &dx, bshd);
        [dx]
    }
}

/// Per-position log-probability of the target token, log softmax(logits)[target], for
/// logits [B, S, V] (bf16 or f32) and i32 targets [B, S] → [B, S] f32: the cross-entropy
/// without the [B, S, V] f32 log-softmax (the issue's "chunked cross-entropy that never
/// materialises full f32 logits"). One block per position reads its row twice (max, then
/// Σ exp) in f32; backward writes d logits = g · (onehot(target) − softmax) in the logits'
/// dtype. A target outside 0..V gives 0 and no gradient.
#[derive(Clone, Debug)]
struct TokenLogp {
    targets: Prim,
}

impl Fused<1> for TokenLogp {
    /// The logits and the per-position log Σ exp [B, S] (f32).
    type Saved = (Prim, Prim);

    fn forward(&self, [logits]: [Prim; 1]) -> (Prim, Self::Saved) {
        let dt = logits.dtype;
        let logits = as_dtype(logits, dt);
        let sh = logits.shape();
        let (b, s, v) = (sh[0], sh[1], sh[2]);
        let (logp, lse) = (empty(&logits, vec![b, s], DType::F32), empty(&logits, vec![b, s], DType::F32));
        let name = ["bagel_token_logp_fwd_bf16", "bagel_token_logp_fwd_f32"][variant(dt)];
        cube::launch(name, ((b * s) as u32, 1), 1024, &[&logits, &self.targets, &logp, &lse], &[v as u32]);
        (logp, (logits, lse))
    }

    fn backward(&self, (logits, lse): Self::Saved, dy: Prim) -> [Prim; 1] {
        let dt = logits.dtype;
        let dy = as_dtype(dy, DType::F32);
        let sh = logits.shape();
        let (rows, v) = (sh[0] * sh[1], sh[2]);
        let dl = empty(&logits, sh.clone(), dt);
        let name = ["bagel_token_logp_bwd_bf16", "bagel_token_logp_bwd_f32"][variant(dt)];
        cube::launch(name, (rows as u32, 1), 1024, &[&logits, &self.targets, &lse, &dy, &dl], &[v as u32]);
        [dl]
    }
}

/// Fused per-position target log-probabilities ([`TokenLogp`]): logits [B, S, V] (bf16 or
/// f32), targets [B, S] (the backend's i32 ints) → [B, S] f32. `Err` as [`rms_norm`].
#[allow(clippy::type_complexity)]
pub(crate) fn token_logps<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Result<Tensor<B, 2>, (Tensor<B, 3>, Tensor<B, 2, Int>)> {
    let [b, s, v] = logits.dims();
    let fits = targets.dims() == [b, s] && targets.dtype() == DType::I32 && v > 0 && v <= i32::MAX as usize && b * s > 0 && b * s <= i32::MAX as usize && float_dtype(logits.dtype());
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err((logits, targets));
    };
    let targets: Prim = burn_cubecl::kernel::into_contiguous(to(targets.into_primitive()));
    Ok(run(kind, TokenLogp { targets }, [logits]))
}

/// Σ x² over all elements of `t` (bf16 or f32) as a [1] f32 tensor ([`SquareSums`] of
/// one tensor; the tests' entry point). For this crate's CUDA backend without autodiff (the gradients' backend);
/// `Err` with `t` handed back otherwise.
#[cfg(test)]
pub(crate) fn sum_of_squares<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Tensor<B, 1>, Tensor<B, D>> {
    let mut sums = SquareSums::new();
    sums.add(t)?;
    Ok(sums.finish().expect("one tensor added"))
}

/// Σ x² over many tensors (gradient clipping's global norm), deterministic, in one launch
/// per tensor plus one per [`SquareSums::SLOTS`] tensors: each tensor's pass writes
/// [`SquareSums::BLOCKS`] block partial sums into its own slot of one partials buffer
/// (f32), and one block sums a full buffer, in a fixed order, when it fills and at
/// [`SquareSums::finish`]. Where a pass per tensor ends in its own [1] total, the totals
/// need a sum of their own and an add each (three launches per tensor). On CubeCL's
/// stream; for this crate's CUDA backend without autodiff.
pub(crate) struct SquareSums<B: Backend> {
    /// The partials buffer [SLOTS · BLOCKS] (f32) and the slots used so far.
    part: Option<(Prim, usize)>,
    /// The sum of the buffers already summed.
    total: Option<Tensor<B, 1>>,
}

impl<B: Backend> SquareSums<B> {
    /// Blocks (partial sums) per tensor.
    const BLOCKS: usize = 1024;
    /// Tensors per partials buffer.
    const SLOTS: usize = 256;

    /// Nothing added yet.
    pub(crate) fn new() -> Self {
        SquareSums { part: None, total: None }
    }

    /// Add Σ x² of `t` (bf16 or f32, any shape). `Err` with `t` handed back when `B` is not
    /// this crate's CUDA backend without autodiff, the path is off, or `t` is empty or of
    /// another dtype.
    pub(crate) fn add<const D: usize>(&mut self, t: Tensor<B, D>) -> Result<(), Tensor<B, D>> {
        let n = t.shape().num_elements();
        if kind::<B>() != Some(Kind::Inference) || !float_dtype(t.dtype()) || n == 0 {
            return Err(t);
        }
        let x: Prim = burn_cubecl::kernel::into_contiguous(to(t.into_primitive().tensor()));
        if self.part.as_ref().is_some_and(|(_, used)| *used == Self::SLOTS) {
            self.flush();
        }
        let (part, used) = self.part.get_or_insert_with(|| (empty(&x, vec![Self::SLOTS * Self::BLOCKS], DType::F32), 0));
        let [lo, hi] = cube::words(n);
        // Every block writes its partial (0 when the tensor is smaller than the grid).
        cube::launch(["bagel_sumsq_bf16", "bagel_sumsq_f32"][variant(x.dtype)], (Self::BLOCKS as u32, 1), BLOCK, &[&x, part], &[lo, hi, (*used * Self::BLOCKS) as u32]);
        *used += 1;
        Ok(())
    }

    /// Sum the used slots of the partials buffer into the total and start a new buffer.
    fn flush(&mut self) {
        let Some((part, used)) = self.part.take() else { return };
        let out = empty(&part, vec![1], DType::F32);
        cube::launch("bagel_sum_f32", (1, 1), BLOCK, &[&part, &out], &[(used * Self::BLOCKS) as u32]);
        let out = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(to::<FloatTensor<B>, _>(out)));
        self.total = Some(match self.total.take() {
            Some(t) => t + out,
            None => out,
        });
    }

    /// Σ x² over every tensor added, as [1] f32; `None` when none was.
    pub(crate) fn finish(mut self) -> Option<Tensor<B, 1>> {
        self.flush();
        self.total
    }
}

/// Whether `t` is bf16 or f32 (what the kernels take).
fn float_dtype(t: DType) -> bool {
    matches!(t, DType::BF16 | DType::F32)
}

/// Fused RMSNorm ([`RmsNorm`]): x [B, S, h] f32, w [h] f32 → [B, S, h] in `out` (bf16 or
/// f32), ε `eps`. `Err` with the inputs handed back when `B` is not one of this crate's
/// CUDA backends or the path is off (`BAGEL_CUBLAS=0`).
#[allow(clippy::type_complexity)]
pub(crate) fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f64, out: DType) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 1>)> {
    let [_, _, h] = x.dims();
    let rows = x.shape().num_elements() / h.max(1);
    // One block per row (grid x < 2³¹) and dw's column sum in chunks of 256 rows (grid y ≤ 65,535).
    let fits = x.dtype() == DType::F32 && w.dtype() == DType::F32 && w.dims() == [h] && h > 0 && rows > 0 && rows < 1 << 31 && rows.div_ceil(256) <= 65_535 && float_dtype(out);
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err((x, w));
    };
    let w3: Tensor<B, 3> = w.unsqueeze();
    let y: Tensor<B, 3> = run(kind, RmsNorm { eps: eps as f32, out }, [x, w3]);
    Ok(y)
}

/// dtype conversion between f32 and bf16 as one op: forward converts x to `to`, backward
/// converts the gradient back to x's dtype. Same values as burn's cast (round to nearest
/// even; bf16 → f32 exact), in one vectorised pass: burn 0.21's cast kernel moved about
/// 1.2 TB/s in the step profile (bench/RESULTS.md).
#[derive(Clone, Debug)]
struct Cast {
    to: DType,
}

/// `x` converted to `to` (f32 ↔ bf16), contiguous; `x` itself when already `to`.
fn convert(x: Prim, to: DType) -> Prim {
    let x = burn_cubecl::kernel::into_contiguous(x);
    let name = match (x.dtype, to) {
        (from, to) if from == to => return x,
        (DType::F32, DType::BF16) => "bagel_cast_f32_bf16",
        (DType::BF16, DType::F32) => "bagel_cast_bf16_f32",
        _ => return burn_cubecl::kernel::cast(x, to),
    };
    let n = x.shape().num_elements();
    let y = empty(&x, x.shape(), to);
    if n > 0 {
        cube::launch(name, (n.div_ceil(4 * BLOCK as usize).clamp(1, 1 << 16) as u32, 1), BLOCK, &[&x, &y], &cube::words(n));
    }
    y
}

impl Fused<1> for Cast {
    type Saved = DType;

    fn forward(&self, [x]: [Prim; 1]) -> (Prim, DType) {
        let from = x.dtype;
        (convert(x, self.to), from)
    }

    fn backward(&self, from: DType, dy: Prim) -> [Prim; 1] {
        [convert(dy, from)]
    }
}

/// `x` cast to `to` (f32 ↔ bf16) as the fused [`Cast`] op. `Err` with `x` handed back for
/// burn's cast when `B` is not one of this crate's CUDA backends, the path is off
/// (`BAGEL_CUBLAS=0`, or `BAGEL_FUSED_CAST=0` for this op alone), or the dtypes are
/// another pair.
pub(crate) fn cast<B: Backend, const D: usize>(x: Tensor<B, D>, to: DType) -> Result<Tensor<B, D>, Tensor<B, D>> {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("BAGEL_FUSED_CAST").map_or(true, |v| v != "0"));
    let fits = on && matches!((x.dtype(), to), (DType::F32, DType::BF16) | (DType::BF16, DType::F32)) && x.shape().num_elements() > 0;
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err(x);
    };
    Ok(run(kind, Cast { to }, [x]))
}

/// The residual add with y's widening to f32 folded in ([`residual_add`]).
#[derive(Clone, Debug)]
struct ResidualAdd;

impl Fused<2> for ResidualAdd {
    /// y's dtype (its gradient's).
    type Saved = DType;

    fn forward(&self, [x, y]: [Prim; 2]) -> (Prim, DType) {
        let dt = y.dtype;
        let (x, y) = (as_dtype(x, DType::F32), as_dtype(y, dt));
        let n = x.shape().num_elements();
        let z = empty(&x, x.shape(), DType::F32);
        cube::launch(["bagel_residual_add_bf16", "bagel_residual_add_f32"][variant(dt)], (grid(n), 1), BLOCK, &[&x, &y, &z], &cube::words(n));
        (z, dt)
    }

    /// dx = dz as it is (no launch), dy = dz converted to y's dtype.
    fn backward(&self, dt: DType, dz: Prim) -> [Prim; 2] {
        let dz = as_dtype(dz, DType::F32);
        [dz.clone(), convert(dz, dt)]
    }
}

/// The residual stream's update x + y for x [B, S, h] f32 (the residual stream) and y of
/// x's shape in bf16 or f32 (a branch's output in the compute dtype), as one op: one pass
/// that reads y in its dtype, where a cast to f32 and an add are two passes and write the
/// widened y in between. The gradient of x is the incoming one, that of y the incoming
/// one converted to y's dtype (what the cast's backward did). `Err` with the inputs
/// handed back as [`rms_norm`], and for other shapes or dtypes.
#[allow(clippy::type_complexity)]
pub(crate) fn residual_add<B: Backend>(x: Tensor<B, 3>, y: Tensor<B, 3>) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 3>)> {
    let fits = x.dims() == y.dims() && x.dtype() == DType::F32 && float_dtype(y.dtype()) && x.shape().num_elements() > 0;
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err((x, y));
    };
    Ok(run(kind, ResidualAdd, [x, y]))
}

/// SwiGLU on packed input ([`swiglu_packed`]): x [..., 2F] → silu(x[..., :F]) · x[..., F:].
#[derive(Clone, Debug)]
struct SwiGluPacked;

impl Fused<1> for SwiGluPacked {
    /// The input.
    type Saved = Prim;

    fn forward(&self, [x]: [Prim; 1]) -> (Prim, Prim) {
        let x = burn_cubecl::kernel::into_contiguous(x);
        let mut dims = x.shape()[..].to_vec();
        let last = dims.len() - 1;
        let f = dims[last] / 2;
        dims[last] = f;
        let n: usize = dims.iter().product();
        let h = empty(&x, dims, x.dtype);
        let [lo, hi] = cube::words(n);
        let name = ["bagel_swiglu_packed_fwd_bf16", "bagel_swiglu_packed_fwd_f32"][variant(x.dtype)];
        cube::launch(name, (grid(n), 1), BLOCK, &[&x, &h], &[f as u32, lo, hi]);
        (h, x)
    }

    fn backward(&self, x: Prim, dh: Prim) -> [Prim; 1] {
        let dh = as_dtype(dh, x.dtype);
        let n = dh.shape().num_elements();
        let f = x.shape()[x.shape().len() - 1] / 2;
        let dx = empty(&x, x.shape(), x.dtype);
        let [lo, hi] = cube::words(n);
        let name = ["bagel_swiglu_packed_bwd_bf16", "bagel_swiglu_packed_bwd_f32"][variant(x.dtype)];
        cube::launch(name, (grid(n), 1), BLOCK, &[&x, &dh, &dx], &[f as u32, lo, hi]);
        [dx]
    }
}

/// SwiGLU (Shazeer 2020) on one linear layer's packed gate/up output: x [B, S, 2F] (the
/// gate projection's F columns, then the up projection's, i.e. the output of
/// `[W_gate; W_up]` stacked by rows) → silu(gate) · up [B, S, F] in x's dtype, one kernel
/// each way; the gradient comes back packed like x. `Err` with x handed back as
/// [`rms_norm`], and for an odd last dimension or an F above u32.
pub(crate) fn swiglu_packed<B: Backend>(x: Tensor<B, 3>) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    let w = x.dims()[2];
    let fits = w % 2 == 0 && w / 2 <= u32::MAX as usize && float_dtype(x.dtype()) && x.shape().num_elements() > 0;
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err(x);
    };
    Ok(run(kind, SwiGluPacked, [x]))
}

/// Matrices stacked by rows and converted ([`stack_rows`]): N = 2 or 3 inputs.
#[derive(Clone, Debug)]
struct StackRows {
    to: DType,
}

/// The dtype's name in the kernel names.
fn dtype_name(dt: DType) -> &'static str {
    ["bf16", "f32"][variant(dt)]
}

impl<const N: usize> Fused<N> for StackRows {
    /// Each input's shape, and the inputs' dtype (their gradients').
    type Saved = ([Shape; N], DType);

    fn forward(&self, xs: [Prim; N]) -> (Prim, Self::Saved) {
        let from = xs[0].dtype;
        let xs = xs.map(|x| as_dtype(x, from));
        let shapes = xs.each_ref().map(|x| x.shape());
        let rows: usize = shapes.iter().map(|s| s[0]).sum();
        let y = empty(&xs[0], vec![rows, shapes[0][1]], self.to);
        let name = stack_kernel(false, from, self.to);
        let (refs, words) = stack_args(&xs, &y);
        cube::launch(name, (grid(y.shape().num_elements()), 1), BLOCK, &refs, &words);
        (y, (shapes, from))
    }

    fn backward(&self, (shapes, from): Self::Saved, dy: Prim) -> [Prim; N] {
        let dy = as_dtype(dy, self.to);
        let ds = shapes.map(|s| empty(&dy, s, from));
        let name = stack_kernel(true, self.to, from);
        let (mut refs, words) = stack_args(&ds, &dy);
        // The kernel's parameter order is (dy, d0, d1, d2): the packed side first.
        refs.rotate_right(1);
        cube::launch(name, (grid(dy.shape().num_elements()), 1), BLOCK, &refs, &words);
        ds
    }
}

/// The stacking kernel's name for `from` → `to` (`unstack`: the gradient's way).
fn stack_kernel(unstack: bool, from: DType, to: DType) -> &'static str {
    match (unstack, dtype_name(from), dtype_name(to)) {
        (false, "f32", "bf16") => "bagel_stack_f32_bf16",
        (false, "f32", "f32") => "bagel_stack_f32_f32",
        (false, "bf16", "f32") => "bagel_stack_bf16_f32",
        (false, "bf16", "bf16") => "bagel_stack_bf16_bf16",
        (true, "f32", "bf16") => "bagel_unstack_f32_bf16",
        (true, "f32", "f32") => "bagel_unstack_f32_f32",
        (true, "bf16", "f32") => "bagel_unstack_bf16_f32",
        _ => "bagel_unstack_bf16_bf16",
    }
}

/// The buffers (the N parts, padded to three by repeating the last with 0 elements, then
/// the packed side) and the scalar words (the parts' element counts) of a stacking kernel.
fn stack_args<'a, const N: usize>(parts: &'a [Prim; N], packed: &'a Prim) -> (Vec<&'a Prim>, Vec<u32>) {
    let mut refs: Vec<&Prim> = parts.iter().collect();
    let mut words: Vec<u32> = parts.iter().flat_map(|p| cube::words(p.shape().num_elements())).collect();
    while refs.len() < 3 {
        refs.push(&parts[N - 1]);
        words.extend([0, 0]);
    }
    refs.push(packed);
    (refs, words)
}

/// Matrices [rᵢ, C] stacked by rows into one [Σ rᵢ, C] in dtype `to` (bf16 or f32), with a
/// conversion from the inputs' dtype folded in, as one op: one kernel forward, one
/// backward that splits the gradient and converts each part back. The packed projections
/// of the model's CUDA path stack `[W_q; W_k; W_v]` and `[W_gate; W_up]` with it, which
/// replaces a cast of each weight under mixed precision. N is 2 or 3, the inputs share a
/// dtype (bf16 or f32) and a column count. `Err` with the inputs handed back as
/// [`rms_norm`], and for other shapes or dtypes.
pub(crate) fn stack_rows<B: Backend, const N: usize>(ws: [Tensor<B, 2>; N], to: DType) -> Result<Tensor<B, 2>, [Tensor<B, 2>; N]> {
    let fits = (N == 2 || N == 3)
        && float_dtype(to)
        && float_dtype(ws[0].dtype())
        && ws.iter().all(|w| w.dtype() == ws[0].dtype() && w.dims()[1] == ws[0].dims()[1] && w.dims()[0] > 0)
        && ws[0].dims()[1] > 0;
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err(ws);
    };
    Ok(run(kind, StackRows { to }, ws))
}

/// Fused SwiGLU gate ([`SwiGlu`]): silu(a) · b for a, b [B, S, F] of one dtype (bf16 or
/// f32). `Err` as [`rms_norm`].
#[allow(clippy::type_complexity)]
pub(crate) fn swiglu<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 3>)> {
    let fits = a.dims() == b.dims() && a.dtype() == b.dtype() && float_dtype(a.dtype()) && a.shape().num_elements() > 0;
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err((a, b));
    };
    Ok(run(kind, SwiGlu, [a, b]))
}

/// Fused RoPE with the head transpose ([`Rope`]): x [B, S, H, D] (bf16 or f32, D even) and
/// f32 tables cos, sin [S, D] → [B, H, S, D] in x's dtype. `Err` as [`rms_norm`].
#[allow(clippy::type_complexity)]
pub(crate) fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 2>, Tensor<B, 2>)> {
    let [_, s, _, d] = x.dims();
    let fits = cos.dims() == [s, d] && sin.dims() == [s, d] && d % 2 == 0 && cos.dtype() == DType::F32 && sin.dtype() == DType::F32 && float_dtype(x.dtype()) && x.shape().num_elements() > 0;
    let Some(kind) = kind::<B>().filter(|_| fits) else {
        return Err((x, cos, sin));
    };
    let op = Rope { cos: constant(kind, cos), sin: constant(kind, sin) };
    Ok(run(kind, op, [x]))
}

#[cfg(test)]
mod tests {
    //! Run as the GEMM tests (parent module): on the GPU machine, the test binary with
    //! `cuda_ops --nocapture`; without a device they say so and pass.
    use super::super::tests::{bf16, gpu, random, rel, wide};
    use super::*;
    use burn::tensor::{FloatDType, TensorData};

    type Cpu = Autodiff<burn::backend::NdArray<f32>>;
    type Gpu = Autodiff<Inner>;

    /// [`rel`] against a reference given in f32.
    fn rel32(x: &[f32], r: &[f32]) -> f64 {
        rel(x, &wide(r))
    }

    fn flat<B2: Backend, const D: usize>(t: Tensor<B2, D>) -> Vec<f32> {
        t.cast(FloatDType::F32).into_data().to_vec().unwrap()
    }

    /// The fused cast against burn's cast on the GPU, both ways, bit for bit: f32 → bf16
    /// rounds to nearest even (a tie, a value that overflows to ∞ and a subnormal among
    /// random values; NaN payloads may differ and are left out), bf16 → f32 is exact; 1003 elements, so the vectorised body and the
    /// one-by-one tail both run. The gradient comes back through the opposite conversion.
    #[test]
    fn fused_cast_matches_burns_cast() {
        let Some(device) = gpu() else { return };
        let n = 1003;
        let mut v = random(n, 51);
        v[0] = 1.0 + 2f32.powi(-8);
        v[1] = f32::MAX;
        v[2] = 1e-40;
        let bits = |t: Tensor<Inner, 1>| -> Vec<u32> { t.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect() };
        let x = Tensor::<Gpu, 1>::from_data(TensorData::new(v.clone(), [n]), &device).require_grad();
        let y = cast(x.clone(), DType::BF16).ok().expect("fused path taken");
        let want = Tensor::<Inner, 1>::from_data(TensorData::new(v.clone(), [n]), &device).cast(FloatDType::BF16);
        assert_eq!(bits(y.clone().inner()), bits(want.clone()), "f32 -> bf16");
        let back = cast(y.clone().inner(), DType::F32).ok().expect("fused path taken");
        assert_eq!(bits(back), bits(want.clone()), "bf16 -> f32");
        // Gradient: d Σ cast_f32(y)·w / dx = w rounded to bf16 (the gradient of y), then to f32.
        let w = random(n, 52);
        let wt = Tensor::<Gpu, 1>::from_data(TensorData::new(w.clone(), [n]), &device);
        let g = (y.cast(FloatDType::F32) * wt).sum().backward();
        let want_g = Tensor::<Inner, 1>::from_data(TensorData::new(w, [n]), &device).cast(FloatDType::BF16);
        assert_eq!(bits(x.grad(&g).unwrap()), bits(want_g), "gradient");
    }

    /// Each fused op's output and input gradients (loss Σ y∘u for a random u) against the
    /// model's composed burn ops (`model::rms_norm`, `silu(a)·b`, `model::apply_rope` on
    /// the transposed view) on burn's CPU backend in f32: an independent implementation of
    /// the same formula. Bounds (METHOD.md): f32 1e-5 (f32 arithmetic, different order);
    /// bf16 1e-2 (outputs and gradients rounded to bf16, 2⁻⁹ relative each; the reference
    /// takes the inputs bf16-rounded as the op sees them). RMSNorm's input and weight stay
    /// f32 (as in the model: the residual stream and the parameters), its output and the
    /// incoming gradient are in the compute dtype.
    #[test]
    fn fused_ops_match_composed_burn_ops() {
        let Some(gpu) = gpu() else { return };
        let cpu = Default::default();
        assert!(kind::<Gpu>() == Some(Kind::Plain));
        for (dtype, tol) in [(FloatDType::F32, 1e-5), (FloatDType::BF16, 1e-2)] {
            let seen = |v: &[f32]| if dtype == FloatDType::BF16 { bf16(v) } else { v.to_vec() };
            let dt: DType = dtype.into();
            let mut errs = Vec::new();
            // RMSNorm: x [2, 5, 96], w [96] near 1, ε 1e-5.
            let (x, w, u) = (random(2 * 5 * 96, 51), random(96, 52).iter().map(|v| 1.0 + 0.2 * v).collect::<Vec<_>>(), random(2 * 5 * 96, 53));
            let u = seen(&u);
            let xc = Tensor::<Cpu, 3>::from_data(TensorData::new(x.clone(), [2, 5, 96]), &cpu).require_grad();
            let wc = Tensor::<Cpu, 1>::from_data(TensorData::new(w.clone(), [96]), &cpu).require_grad();
            let yc = crate::model::rms_norm(xc.clone(), wc.clone(), 1e-5);
            let gc = (yc.clone() * Tensor::from_data(TensorData::new(u.clone(), [2, 5, 96]), &cpu)).sum().backward();
            let xg = Tensor::<Gpu, 3>::from_data(TensorData::new(x.clone(), [2, 5, 96]), &gpu).require_grad();
            let wg = Tensor::<Gpu, 1>::from_data(TensorData::new(w.clone(), [96]), &gpu).require_grad();
            let yg = rms_norm(xg.clone(), wg.clone(), 1e-5, dt).ok().expect("fused RMSNorm taken");
            assert_eq!(yg.dtype(), dt);
            let gg = (yg.clone() * Tensor::<Gpu, 3>::from_data(TensorData::new(u.clone(), [2, 5, 96]), &gpu).cast(dtype)).cast(FloatDType::F32).sum().backward();
            errs.push(("rmsnorm y", rel32(&flat(yg.inner()), &flat(yc.inner()))));
            errs.push(("rmsnorm dx", rel32(&flat(xg.grad(&gg).unwrap()), &flat(xc.grad(&gc).unwrap()))));
            errs.push(("rmsnorm dw", rel32(&flat(wg.grad(&gg).unwrap()), &flat(wc.grad(&gc).unwrap()))));
            // SwiGLU: a, b [3, 4, 80].
            let (a, b, u) = (seen(&random(960, 54).iter().map(|v| 3.0 * v).collect::<Vec<_>>()), seen(&random(960, 55)), seen(&random(960, 56)));
            let t3c = |v: &[f32]| Tensor::<Cpu, 3>::from_data(TensorData::new(v.to_vec(), [3, 4, 80]), &cpu).require_grad();
            let t3g = |v: &[f32]| Tensor::<Gpu, 3>::from_data(TensorData::new(v.to_vec(), [3, 4, 80]), &gpu).require_grad();
            let (ac, bc) = (t3c(&a), t3c(&b));
            let hc = burn::tensor::activation::silu(ac.clone()) * bc.clone();
            let gc = (hc.clone() * t3c(&u)).sum().backward();
            let (ag, bg) = (t3g(&a), t3g(&b));
            let hg = swiglu(ag.clone().cast(dtype), bg.clone().cast(dtype)).ok().expect("fused SwiGLU taken");
            let gg = (hg.clone() * t3g(&u).cast(dtype)).cast(FloatDType::F32).sum().backward();
            errs.push(("swiglu h", rel32(&flat(hg.inner()), &flat(hc.inner()))));
            errs.push(("swiglu da", rel32(&flat(ag.grad(&gg).unwrap()), &flat(ac.grad(&gc).unwrap()))));
            errs.push(("swiglu db", rel32(&flat(bg.grad(&gg).unwrap()), &flat(bc.grad(&gc).unwrap()))));
            // RoPE: x [2, 9, 3, 16] (B, S, H, D), θ 10⁴, out [2, 3, 9, 16].
            let (x, u) = (seen(&random(2 * 9 * 3 * 16, 57)), seen(&random(2 * 9 * 3 * 16, 58)));
            let (cc, sc) = crate::model::rope_tables::<Cpu>(9, 16, 1e4, &cpu);
            let xc = Tensor::<Cpu, 4>::from_data(TensorData::new(x.clone(), [2, 9, 3, 16]), &cpu).require_grad();
            let yc = crate::model::apply_rope(xc.clone().swap_dims(1, 2), cc.unsqueeze(), sc.unsqueeze());
            let gc = (yc.clone() * Tensor::from_data(TensorData::new(u.clone(), [2, 3, 9, 16]), &cpu)).sum().backward();
            let (cg, sg) = crate::model::rope_tables::<Gpu>(9, 16, 1e4, &gpu);
            let xg = Tensor::<Gpu, 4>::from_data(TensorData::new(x.clone(), [2, 9, 3, 16]), &gpu).require_grad();
            let yg = rope(xg.clone().cast(dtype), cg, sg).ok().expect("fused RoPE taken");
            assert_eq!(yg.dims(), [2, 3, 9, 16]);
            let gg = (yg.clone() * Tensor::<Gpu, 4>::from_data(TensorData::new(u.clone(), [2, 3, 9, 16]), &gpu).cast(dtype)).cast(FloatDType::F32).sum().backward();
            errs.push(("rope y", rel32(&flat(yg.inner()), &flat(yc.inner()))));
            errs.push(("rope dx", rel32(&flat(xg.grad(&gg).unwrap()), &flat(xc.grad(&gc).unwrap()))));
            // Token log-probabilities: logits [2, 3, 50] (spread ×4), targets in 0..50.
            let (l, u) = (seen(&random(300, 59).iter().map(|v| 4.0 * v).collect::<Vec<_>>()), random(6, 60));
            let tg: Vec<i32> = random(6, 61).iter().map(|v| ((v + 1.0) * 25.0) as i32 % 50).collect();
            let lc = Tensor::<Cpu, 3>::from_data(TensorData::new(l.clone(), [2, 3, 50]), &cpu).require_grad();
            let tc = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(tg.clone(), [2, 3]), &cpu);
            let pc = burn::tensor::activation::log_softmax(lc.clone(), 2).gather(2, tc.unsqueeze_dim(2)).squeeze_dim::<2>(2);
            let gc = (pc.clone() * Tensor::from_data(TensorData::new(u.clone(), [2, 3]), &cpu)).sum().backward();
            let lg = Tensor::<Gpu, 3>::from_data(TensorData::new(l.clone(), [2, 3, 50]), &gpu).require_grad();
            let tgg = Tensor::<Gpu, 2, Int>::from_data(TensorData::new(tg.clone(), [2, 3]), &gpu);
            let pg = token_logps(lg.clone().cast(dtype), tgg).ok().expect("fused log-probabilities taken");
            let gg = (pg.clone() * Tensor::<Gpu, 2>::from_data(TensorData::new(u.clone(), [2, 3]), &gpu)).sum().backward();
            errs.push(("logp", rel32(&flat(pg.inner()), &flat(pc.inner()))));
            errs.push(("logp dlogits", rel32(&flat(lg.grad(&gg).unwrap()), &flat(lc.grad(&gc).unwrap()))));
            // Sum of squares (gradient clipping): 300,001 elements, more than one block's share.
            let x = seen(&random(300_001, 62));
            let want: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let xg = Tensor::<Inner, 1>::from_data(TensorData::new(x.clone(), [300_001]), &gpu).cast(dtype);
            let got = flat(sum_of_squares(xg).ok().expect("fused sum of squares taken"))[0] as f64;
            errs.push(("sum of squares", ((got - want) / want).abs()));
            // Over many tensors: 300 (more than one partials buffer), of 1 to 3,000 elements.
            let mut sums = SquareSums::<Inner>::new();
            let mut want = 0f64;
            for i in 0..300usize {
                let x = seen(&random(1 + i * 10, 63 + i as u64));
                want += x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
                sums.add(Tensor::<Inner, 1>::from_data(TensorData::new(x.clone(), [x.len()]), &gpu).cast(dtype)).ok().expect("fused sum of squares taken");
            }
            let got = flat(sums.finish().expect("tensors added"))[0] as f64;
            errs.push(("sum of squares, 300 tensors", ((got - want) / want).abs()));
            let line: Vec<String> = errs.iter().map(|(n, e)| format!("{n} {e:.1e}")).collect();
            eprintln!("fused ops {dtype:?} vs composed (CPU): {}", line.join(", "));
            assert!(errs.iter().all(|(_, e)| *e < tol), "{dtype:?}: {errs:?} above {tol}");
        }
    }
}
