//! The optimizer SFT, DPO and the step benchmark use: AdamW with burn's semantics
//! (`burn::optim::AdamW`: Loshchilov & Hutter 2019, decoupled weight decay, bias
//! correction by the step count, ε outside the square root), whose step runs as one fused
//! CUDA kernel per parameter on this crate's CUDA backend (`crate::cuda_ops`, feature
//! `cuda`) and as burn's own `AdamW` everywhere else.
//!
//! burn's `AdamW` step is about fifteen element-wise passes over each f32 parameter
//! (moments, bias correction, square root, division, decay, update), each reading and
//! writing the whole tensor; the fused kernel reads parameter, gradient and both moments
//! once and writes parameter and moments once. The state is burn's [`AdamWState`], so
//! checkpoints are interchangeable with burn's `AdamW`.
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, AdamWState, SimpleOptimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, Tensor};
use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};

/// The factor every gradient is multiplied by in the optimizer's next steps: global-norm
/// clipping's coefficient, min(1, max_norm / (‖g‖₂ + 1e-6))
/// (`torch.nn.utils.clip_grad_norm_`), as a [1] f32 tensor that stays on the device, so
/// that clipping needs no host sync and no pass of its own over the gradients (the fused
/// AdamW kernel reads it). Shared between the training loop, which sets it each step
/// ([`crate::sft::clip_global_norm_deferred`]), and the optimizer (clones share it).
/// Unset: gradients are used as they are.
#[derive(Clone, Default)]
pub struct GradScale(Arc<Mutex<Option<Box<dyn Any + Send>>>>);

impl GradScale {
    /// Use `scale` [1] (on backend `B`, the backend the optimizer steps on: the inner
    /// backend of an autodiff one) from now on.
    pub fn set<B: Backend>(&self, scale: Tensor<B, 1>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(scale));
    }

    /// Use the gradients unscaled from now on.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The factor, when one is set. Panics when it was set on another backend than `B`
    /// (clipping would otherwise be skipped silently).
    fn get<B: Backend>(&self) -> Option<Tensor<B, 1>> {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().map(|t| t.downcast_ref::<Tensor<B, 1>>().cloned().expect("GradScale set on another backend than the optimizer steps on"))
    }
}

/// AdamW hyper-parameters (HF Trainer's knobs) and burn's `AdamW` for the unfused path.
#[derive(Clone)]
pub struct FusedAdamW {
    inner: AdamW,
    /// β₁ (first-moment decay).
    pub beta_1: f32,
    /// β₂ (second-moment decay).
    pub beta_2: f32,
    /// ε, added to √v̂.
    pub epsilon: f32,
    /// Decoupled weight decay λ: the parameter is scaled by 1 − lr·λ each step.
    pub weight_decay: f32,
    /// The factor applied to every gradient before the update (gradient clipping).
    pub grad_scale: GradScale,
}

impl FusedAdamW {
    /// AdamW with these hyper-parameters (no AMSGrad, no cautious weight decay).
    pub fn new(beta_1: f64, beta_2: f64, epsilon: f64, weight_decay: f64) -> FusedAdamW {
        let (beta_1, beta_2, epsilon, weight_decay) = (beta_1 as f32, beta_2 as f32, epsilon as f32, weight_decay as f32);
        let inner = AdamWConfig::new().with_beta_1(beta_1).with_beta_2(beta_2).with_epsilon(epsilon).with_weight_decay(weight_decay).build();
        FusedAdamW { inner, beta_1, beta_2, epsilon, weight_decay, grad_scale: GradScale::default() }
    }

    /// As an optimizer of `M` on autodiff backend `B` (burn's adaptor: per-parameter state,
    /// records for checkpoints).
    pub fn init<B: AutodiffBackend, M: burn::module::AutodiffModule<B>>(self) -> OptimizerAdaptor<FusedAdamW, M, B> {
        OptimizerAdaptor::from(self)
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    /// One AdamW step on one parameter, with the gradient multiplied by
    /// [`FusedAdamW::grad_scale`] when set (inside the fused kernel on the CUDA backend).
    fn step<const D: usize>(&self, lr: f64, tensor: Tensor<B, D>, grad: Tensor<B, D>, state: Option<Self::State<D>>) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let scale = self.grad_scale.get::<B>();
        #[cfg(feature = "cuda")]
        let (tensor, grad, state) = match crate::cuda_ops::adamw_step(self, lr, tensor, grad, state, scale.clone()) {
            Ok(done) => return done,
            Err(args) => args,
        };
        let grad = match scale {
            Some(s) => grad.mul(s.reshape([1; D])),
            None => grad,
        };
        self.inner.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device<B>) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}
