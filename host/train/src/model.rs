//! Llama/Mistral decoder (Touvron et al. 2023, "Llama 2"; Jiang et al. 2023, "Mistral 7B"),
//! written to match HF transformers' `LlamaForCausalLM` numerically:
//! RMSNorm (Zhang & Sennrich 2019), RoPE in the rotate-half layout (Su et al. 2021),
//! grouped-query attention (Ainslie et al. 2023), SwiGLU MLP (Shazeer 2020).
//! Linear weights are kept in HF layout `[out, in]`, so loading and saving never transpose.
use crate::config::LlamaConfig;
use burn::module::{Module, Param};
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, FloatDType, Int, Tensor, TensorData};

/// One decoder layer.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// `input_layernorm.weight` [H].
    pub attn_norm: Param<Tensor<B, 1>>,
    /// `self_attn.q_proj.weight` [heads·hd, H].
    pub q: Param<Tensor<B, 2>>,
    /// `self_attn.k_proj.weight` [kv·hd, H].
    pub k: Param<Tensor<B, 2>>,
    /// `self_attn.v_proj.weight` [kv·hd, H].
    pub v: Param<Tensor<B, 2>>,
    /// `self_attn.o_proj.weight` [H, heads·hd].
    pub o: Param<Tensor<B, 2>>,
    /// `post_attention_layernorm.weight` [H].
    pub mlp_norm: Param<Tensor<B, 1>>,
    /// `mlp.gate_proj.weight` [I, H].
    pub gate: Param<Tensor<B, 2>>,
    /// `mlp.up_proj.weight` [I, H].
    pub up: Param<Tensor<B, 2>>,
    /// `mlp.down_proj.weight` [H, I].
    pub down: Param<Tensor<B, 2>>,
}

/// The causal LM.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `model.embed_tokens.weight` [V, H].
    pub embed: Param<Tensor<B, 2>>,
    /// Decoder layers.
    pub layers: Vec<Block<B>>,
    /// `model.norm.weight` [H].
    pub norm: Param<Tensor<B, 1>>,
    /// `lm_head.weight` [V, H]; `None` when tied to `embed`.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// RMSNorm ε.
    pub eps: f64,
    /// RoPE θ.
    pub rope_theta: f64,
    /// bf16 mixed precision ([`Llama::with_bf16`]): parameters, their gradients and the
    /// optimizer state stay f32; matmuls and activations run in bf16.
    pub bf16: bool,
}

/// Source of initial tensors by HF name (weights file, or random init).
pub trait TensorSource<B: Backend> {
    /// A 2-D tensor of `shape`.
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> crate::error::Result<Tensor<B, 2>>;
    /// A 1-D tensor of `len` (norm weights).
    fn vector(&mut self, name: &str, len: usize) -> crate::error::Result<Tensor<B, 1>>;
    /// Whether `name` exists (for an optional `lm_head.weight`).
    fn has(&self, name: &str) -> bool;
}

/// Random init: N(0, 0.02²) matrices (HF `initializer_range` default), ones for norms.
pub struct RandomInit<'a, B: Backend> {
    /// Device.
    pub device: &'a B::Device,
}

impl<B: Backend> TensorSource<B> for RandomInit<'_, B> {
    fn matrix(&mut self, _name: &str, shape: [usize; 2]) -> crate::error::Result<Tensor<B, 2>> {
        Ok(Tensor::random(shape, Distribution::Normal(0.0, 0.02), self.device))
    }
    fn vector(&mut self, _name: &str, len: usize) -> crate::error::Result<Tensor<B, 1>> {
        Ok(Tensor::ones([len], self.device))
    }
    fn has(&self, _name: &str) -> bool {
        false
    }
}

impl<B: Backend> Llama<B> {
    /// Build from a config, taking tensors from `src` under their HF names.
    pub fn from_source(c: &LlamaConfig, src: &mut impl TensorSource<B>) -> crate::error::Result<Llama<B>> {
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (hd, nh, nkv) = (c.head_dim(), c.num_attention_heads, c.kv_heads());
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}.");
            layers.push(Block {
                attn_norm: Param::from_tensor(src.vector(&format!("{p}input_layernorm.weight"), h)?),
                q: Param::from_tensor(src.matrix(&format!("{p}self_attn.q_proj.weight"), [nh * hd, h])?),
                k: Param::from_tensor(src.matrix(&format!("{p}self_attn.k_proj.weight"), [nkv * hd, h])?),
                v: Param::from_tensor(src.matrix(&format!("{p}self_attn.v_proj.weight"), [nkv * hd, h])?),
                o: Param::from_tensor(src.matrix(&format!("{p}self_attn.o_proj.weight"), [h, nh * hd])?),
                mlp_norm: Param::from_tensor(src.vector(&format!("{p}post_attention_layernorm.weight"), h)?),
                gate: Param::from_tensor(src.matrix(&format!("{p}mlp.gate_proj.weight"), [i, h])?),
                up: Param::from_tensor(src.matrix(&format!("{p}mlp.up_proj.weight"), [i, h])?),
                down: Param::from_tensor(src.matrix(&format!("{p}mlp.down_proj.weight"), [h, i])?),
            });
        }
        let embed = Param::from_tensor(src.matrix("model.embed_tokens.weight", [v, h])?);
        let lm_head = if c.tie_word_embeddings && !src.has("lm_head.weight") {
            None
        } else {
            Some(Param::from_tensor(src.matrix("lm_head.weight", [v, h])?))
        };
        Ok(Llama { embed, layers, norm: Param::from_tensor(src.vector("model.norm.weight", h)?), lm_head, n_heads: nh, n_kv_heads: nkv, eps: c.rms_norm_eps, rope_theta: c.rope_theta, bf16: false })
    }

    /// Every tensor under its HF name, in a stable order (for saving).
    pub fn named_tensors(&self) -> Vec<(String, Tensor<B, 2>)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.val())];
        for (l, b) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}.");
            out.push((format!("{p}input_layernorm.weight"), b.attn_norm.val().unsqueeze::<2>()));
            out.push((format!("{p}self_attn.q_proj.weight"), b.q.val()));
            out.push((format!("{p}self_attn.k_proj.weight"), b.k.val()));
            out.push((format!("{p}self_attn.v_proj.weight"), b.v.val()));
            out.push((format!("{p}self_attn.o_proj.weight"), b.o.val()));
            out.push((format!("{p}post_attention_layernorm.weight"), b.mlp_norm.val().unsqueeze::<2>()));
            out.push((format!("{p}mlp.gate_proj.weight"), b.gate.val()));
            out.push((format!("{p}mlp.up_proj.weight"), b.up.val()));
            out.push((format!("{p}mlp.down_proj.weight"), b.down.val()));
        }
        out.push(("model.norm.weight".to_string(), self.norm.val().unsqueeze::<2>()));
        if let Some(w) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), w.val()));
        }
        out
    }

    /// Switch bf16 mixed precision on or off. On: the f32 parameters are cast to bf16 where
    /// they are used (the cast's backward casts gradients back to f32), matmuls, RoPE,
    /// SwiGLU and the residual branches run in bf16, while RMSNorm statistics, the
    /// residual stream, the attention softmax and the log-softmax of the loss are computed
    /// in f32, as under PyTorch autocast (its f32 list has softmax and the norms).
    /// Micikevicius et al. 2018, "Mixed Precision Training"; bf16 needs no loss scaling
    /// (Kalamkar et al. 2019). On this crate's CUDA backends the fused kernels
    /// (`crate::cuda_ops`) read bf16 and compute in f32, RoPE with f32 tables as HF Llama
    /// does under autocast, and the loss reads the bf16 logits without an f32 copy. On the
    /// composed path the cos/sin tables are cast to bf16, which costs precision at long
    /// positions, and the logits are cast to f32 before the log-softmax. Off: all f32.
    pub fn with_bf16(mut self, on: bool) -> Self {
        self.bf16 = on;
        self
    }

    /// Logits [B, S, V] (f32) for token ids [B, S] (positions 0..S, causal attention).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.hi(self.logits_lo(tokens))
    }

    /// Logits [B, S, V] in the compute dtype (bf16 under mixed precision, else f32).
    fn logits_lo(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, s] = tokens.dims();
        let device = tokens.device();
        let h = self.embed.val().dims()[1];
        let mut x = self.embed.val().select(0, tokens.reshape([b * s])).reshape([b, s, h]);
        let hd = h / self.n_heads;
        let (cos, sin) = rope_tables::<B>(s, hd, self.rope_theta, &device);
        // Made only if the composed attention runs (the fused op masks in its kernel).
        let mask = std::cell::OnceCell::new();
        // This crate's CUDA backends: each layer's projections packed (`Llama::block_packed`).
        #[cfg(feature = "cuda")]
        let packed = crate::cuda_ops::packed_fits::<B>([b, s, (self.n_heads + 2 * self.n_kv_heads) * hd], self.compute_dtype(), self.n_heads, self.n_kv_heads);
        for blk in &self.layers {
            #[cfg(feature = "cuda")]
            if packed {
                x = self.block_packed(x, blk, &cos, &sin);
                continue;
            }
            let a = self.norm(x.clone(), blk.attn_norm.val());
            let q = self.rope(linear(a.clone(), self.lo(blk.q.val())).reshape([b, s, self.n_heads, hd]), &cos, &sin);
            let k = self.rope(linear(a.clone(), self.lo(blk.k.val())).reshape([b, s, self.n_kv_heads, hd]), &cos, &sin);
            let v = linear(a, self.lo(blk.v.val())).reshape([b, s, self.n_kv_heads, hd]).swap_dims(1, 2);
            let attn = self.attention(q, k, v, || mask.get_or_init(|| causal_mask::<B>(s, &device)).clone()).swap_dims(1, 2).reshape([b, s, self.n_heads * hd]);
            x = self.residual(x, linear(attn, self.lo(blk.o.val())));
            let m = self.norm(x.clone(), blk.mlp_norm.val());
            let ff = swiglu(linear(m.clone(), self.lo(blk.gate.val())), linear(m, self.lo(blk.up.val())));
            x = self.residual(x, linear(ff, self.lo(blk.down.val())));
        }
        let x = self.norm(x, self.norm.val());
        let head = match &self.lm_head {
            Some(w) => w.val(),
            None => self.embed.val(),
        };
        linear(x, self.lo(head))
    }

    /// The compute dtype: bf16 under mixed precision, else the parameters' own.
    #[cfg(feature = "cuda")]
    fn compute_dtype(&self) -> burn::tensor::DType {
        if self.bf16 {
            burn::tensor::DType::BF16
        } else {
            self.embed.val().dtype()
        }
    }

    /// One decoder layer on the residual stream x [B, S, h] (f32) with the projections
    /// packed, for this crate's CUDA backends (`crate::cuda_ops::packed_fits`): q, k and v
    /// as one GEMM with the stacked weight `[W_q; W_k; W_v]` [(H + 2·KV)·hd, h], whose
    /// output goes to one op that applies RoPE, attends and merges the heads
    /// (`crate::cuda_ops::attention_packed`); gate and up as one GEMM with `[W_gate; W_up]`
    /// [2I, h] into a SwiGLU that reads both halves (`crate::cuda_ops::swiglu_packed`). The
    /// stacking is an op with the cast to the compute dtype folded in
    /// (`crate::cuda_ops::stack_rows`), so the parameters and their gradients stay the
    /// separate HF tensors. Same arithmetic as the unpacked layer (the loop in
    /// `Llama::logits_lo`), in fewer launches: 10 ordered cuBLAS sessions per layer and
    /// step instead of 16, 4 weight casts (two of them stacking) instead of 7 each way, and no launches for RoPE,
    /// the head transposes or the sums of the q/k/v and gate/up input gradients.
    /// `BAGEL_PACKED=0` turns it off.
    #[cfg(feature = "cuda")]
    fn block_packed(&self, x: Tensor<B, 3>, blk: &Block<B>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 3> {
        use crate::cuda_ops::{attention_packed, stack_rows, swiglu_packed};
        let dt = self.compute_dtype();
        let a = self.norm(x.clone(), blk.attn_norm.val());
        let wqkv = stack_rows([blk.q.val(), blk.k.val(), blk.v.val()], dt).unwrap_or_else(|[q, k, v]| Tensor::cat(vec![self.lo(q), self.lo(k), self.lo(v)], 0));
        let attn = attention_packed(linear(a, wqkv), cos.clone(), sin.clone(), self.n_heads, self.n_kv_heads);
        let x = self.residual(x, linear(attn, self.lo(blk.o.val())));
        let m = self.norm(x.clone(), blk.mlp_norm.val());
        let wgu = stack_rows([blk.gate.val(), blk.up.val()], dt).unwrap_or_else(|[g, u]| Tensor::cat(vec![self.lo(g), self.lo(u)], 0));
        let ff = swiglu_packed(linear(m, wgu)).unwrap_or_else(|gu| {
            let f = gu.dims()[2] / 2;
            swiglu(gu.clone().narrow(2, 0, f), gu.narrow(2, f, f))
        });
        self.residual(x, linear(ff, self.lo(blk.down.val())))
    }

    /// The residual stream's update x + y: x [B, S, h] f32, y a branch's output in the
    /// compute dtype, widened to f32. On this crate's CUDA backends one fused op
    /// (`crate::cuda_ops::residual_add`), elsewhere the cast and burn's add.
    fn residual(&self, x: Tensor<B, 3>, y: Tensor<B, 3>) -> Tensor<B, 3> {
        #[cfg(feature = "cuda")]
        let (x, y) = match crate::cuda_ops::residual_add(x, y) {
            Ok(z) => return z,
            Err(xy) => xy,
        };
        x + self.hi(y)
    }

    /// Causal grouped-query attention softmax(q·kᵀ/√hd + mask)·v for q [B, H, S, hd], k and
    /// v [B, KV, S, hd] (query head h reads KV head h / (H/KV), HF's `repeat_kv`); returns
    /// [B, H, S, hd]. Scores and softmax in f32, P·v in the compute dtype. On this crate's
    /// CUDA backends one fused op (`crate::cuda_ops::attention`: cuBLAS products, fused
    /// softmax kernels, no f32 score matrix kept for backward); elsewhere composed from burn
    /// ops with the additive causal mask [1, 1, S, S] that `mask` makes.
    fn attention(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: impl FnOnce() -> Tensor<B, 4>) -> Tensor<B, 4> {
        #[cfg(feature = "cuda")]
        let (q, k, v) = match crate::cuda_ops::attention(q, k, v) {
            Ok(o) => return o,
            Err(qkv) => qkv,
        };
        let hd = q.dims()[3];
        let g = self.n_heads / self.n_kv_heads;
        let (k, v) = (repeat_kv(k, g), repeat_kv(v, g));
        let scores = self.hi(matmul_t(q, k, false, true)).div_scalar((hd as f64).sqrt()) + mask();
        matmul_t(self.lo(softmax(scores, 3)), v, false, false)
    }

    /// RMSNorm of the f32 residual stream x [B, S, h] with weight w [h], in the compute
    /// dtype. On this crate's CUDA backends one fused op (`crate::cuda_ops::rms_norm`),
    /// elsewhere [`rms_norm`] then the cast.
    fn norm(&self, x: Tensor<B, 3>, w: Tensor<B, 1>) -> Tensor<B, 3> {
        #[cfg(feature = "cuda")]
        let (x, w) = match crate::cuda_ops::rms_norm(x, w, self.eps, if self.bf16 { burn::tensor::DType::BF16 } else { burn::tensor::DType::F32 }) {
            Ok(y) => return y,
            Err(xw) => xw,
        };
        self.lo(rms_norm(x, w, self.eps))
    }

    /// RoPE on x [B, S, H, hd] (a linear layer's output split into heads) with f32 tables
    /// cos, sin [S, hd], returned head-major [B, H, S, hd] in x's dtype. On this crate's
    /// CUDA backends one fused op that also does the transpose (`crate::cuda_ops::rope`,
    /// f32 arithmetic); elsewhere [`apply_rope`] on the transposed view, with the tables in
    /// the compute dtype.
    fn rope(&self, x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
        #[cfg(feature = "cuda")]
        let x = match crate::cuda_ops::rope(x, cos.clone(), sin.clone()) {
            Ok(y) => return y,
            Err((x, _, _)) => x,
        };
        let t = |c: &Tensor<B, 2>| self.lo(c.clone().unsqueeze::<4>());
        apply_rope(x.swap_dims(1, 2), t(cos), t(sin))
    }

    /// To the compute dtype: bf16 under mixed precision, else unchanged.
    fn lo<const D: usize>(&self, t: Tensor<B, D>) -> Tensor<B, D> {
        if self.bf16 {
            // One vectorised pass each way on this crate's CUDA backends.
            #[cfg(feature = "cuda")]
            let t = match crate::cuda_ops::cast(t, burn::tensor::DType::BF16) {
                Ok(y) => return y,
                Err(t) => t,
            };
            t.cast(FloatDType::BF16)
        } else {
            t
        }
    }

    /// Back to f32 under mixed precision, else unchanged.
    fn hi<const D: usize>(&self, t: Tensor<B, D>) -> Tensor<B, D> {
        if self.bf16 {
            #[cfg(feature = "cuda")]
            let t = match crate::cuda_ops::cast(t, burn::tensor::DType::F32) {
                Ok(y) => return y,
                Err(t) => t,
            };
            t.cast(FloatDType::F32)
        } else {
            t
        }
    }

    /// Summed token cross-entropy over positions where `mask` is 1: `tokens` [B, S] are the
    /// inputs, `targets` [B, S] the next tokens, `mask` [B, S] ∈ {0, 1}. Returns the sum of
    /// the losses [1] (nats); dividing by a caller-chosen count is how gradient
    /// accumulation normalises by the tokens of the whole accumulated batch.
    pub fn loss_sum(&self, tokens: Tensor<B, 2, Int>, targets: Tensor<B, 2, Int>, mask: Tensor<B, 2>) -> Tensor<B, 1> {
        (self.token_logps(tokens, targets) * mask).sum().neg()
    }

    /// Per-sequence sum of target-token log-probabilities [B]: `tokens`, `targets`, `mask`
    /// as in [`Llama::loss_sum`]. Used by DPO (log π(y|x) summed over response tokens).
    pub fn sequence_logps(&self, tokens: Tensor<B, 2, Int>, targets: Tensor<B, 2, Int>, mask: Tensor<B, 2>) -> Tensor<B, 1> {
        (self.token_logps(tokens, targets) * mask).sum_dim(1).squeeze_dim::<1>(1)
    }

    /// log p(targets[b, s] | tokens[b, ..=s]) [B, S] (f32, nats) for inputs `tokens` and
    /// next tokens `targets`, both [B, S]. On this crate's CUDA backends one fused op on
    /// the compute-dtype logits (`crate::cuda_ops::token_logps`: no f32 [B, S, V]
    /// log-softmax); elsewhere log_softmax of the f32 logits, then a gather.
    pub fn token_logps(&self, tokens: Tensor<B, 2, Int>, targets: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let logits = self.logits_lo(tokens);
        #[cfg(feature = "cuda")]
        let (logits, targets) = match crate::cuda_ops::token_logps(logits, targets) {
            Ok(lp) => return lp,
            Err(lt) => lt,
        };
        let lp = log_softmax(self.hi(logits), 2);
        lp.gather(2, targets.unsqueeze_dim(2)).squeeze_dim::<2>(2)
    }
}

/// `x W^T` for x [B, S, in] and W [out, in], as one [B·S, in] × [in, out] product (one
/// large GEMM rather than B broadcast ones: GPU matmul kernels are picked and tuned per
/// shape, and the large-M case is where tensor-core kernels pay).
pub(crate) fn linear<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 2>) -> Tensor<B, 3> {
    let [b, s, i] = x.dims();
    let o = w.dims()[0];
    matmul_t(x.reshape([b * s, i]), w, false, true).reshape([b, s, o])
}

/// `op(a) · op(b)` over the last two dimensions (leading ones a batch), where `op(a)` is
/// `a` transposed when `ta`, likewise `b` with `tb`. On this crate's CUDA backends the
/// product runs through cuBLAS (`crate::cuda_ops`, feature `cuda`; `BAGEL_CUBLAS=0` turns
/// it off), elsewhere through burn's `matmul`.
pub(crate) fn matmul_t<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, ta: bool, tb: bool) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    let (a, b) = match crate::cuda_ops::matmul(a, b, ta, tb) {
        Ok(c) => return c,
        Err(ab) => ab,
    };
    let a = if ta { a.swap_dims(D - 2, D - 1) } else { a };
    let b = if tb { b.swap_dims(D - 2, D - 1) } else { b };
    a.matmul(b)
}

/// SwiGLU's gate silu(a) · b (Shazeer 2020): one fused op on this crate's CUDA backends
/// (`crate::cuda_ops::swiglu`), burn's ops elsewhere.
fn swiglu<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "cuda")]
    let (a, b) = match crate::cuda_ops::swiglu(a, b) {
        Ok(h) => return h,
        Err(ab) => ab,
    };
    silu(a) * b
}

/// RMSNorm: x / sqrt(mean(x²) + ε) · w.
pub(crate) fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let rms = x.clone().powf_scalar(2.0).mean_dim(2).add_scalar(eps).sqrt();
    x.div(rms) * w.unsqueeze::<3>()
}

/// cos/sin tables [S, hd] (f32) for HF's rotate-half RoPE.
pub(crate) fn rope_tables<B: Backend>(s: usize, hd: usize, theta: f64, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = hd / 2;
    let mut cos = Vec::with_capacity(s * hd);
    let mut sin = Vec::with_capacity(s * hd);
    for pos in 0..s {
        for j in 0..hd {
            let inv = theta.powf(-2.0 * (j % half) as f64 / hd as f64);
            let a = pos as f64 * inv;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let t = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [s, hd]), device);
    (t(cos), t(sin))
}

/// x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁] over the last dim.
pub(crate) fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let hd = x.dims()[3];
    let half = hd / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rot = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rot * sin
}

/// [B, kv, S, hd] → [B, kv·g, S, hd], head kv·g + j = kv head kv (HF `repeat_kv`).
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, g: usize) -> Tensor<B, 4> {
    if g == 1 {
        return x;
    }
    let [b, kv, s, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).repeat_dim(2, g).reshape([b, kv * g, s, hd])
}

/// Additive causal mask [1, 1, S, S]: 0 on and below the diagonal, −∞ above.
fn causal_mask<B: Backend>(s: usize, device: &B::Device) -> Tensor<B, 4> {
    let mut m = vec![0f32; s * s];
    for i in 0..s {
        for j in (i + 1)..s {
            m[i * s + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::<B, 2>::from_data(TensorData::new(m, [s, s]), device).unsqueeze::<4>()
}
