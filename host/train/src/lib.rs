//! bagel's trainer — the only crate that imports burn.
//!
//! - [`config::LlamaConfig`]: the HF `config.json` of a Llama/Mistral model (saved next to
//!   every checkpoint, burn's Config + Module pairing).
//! - [`model::Llama`]: RMSNorm, RoPE (`rope_theta`, HF rotate-half layout; no
//!   `rope_scaling` types yet: a config that sets one is refused), grouped-query
//!   attention, SwiGLU MLP, tied or untied embeddings.
//! - [`weights`]: HF safetensors in (single file or sharded index; F32/F16/BF16) and out.
//! - [`data`]: `sft.parquet` → token ids with the response-only loss mask.
//! - [`gguf`]: llama.cpp GGUF → HF directory (F32/F16/Q8_0/Q4_0/Q4_1, Q/K un-permute,
//!   byte-level BPE tokenizer rebuilt). [`generate`]: greedy decoding.
//! - [`sft`]: the SFT loop: AdamW, linear schedule with warm-up, global gradient-norm
//!   clipping, gradient accumulation normalised by target tokens, metrics JSONL.
//!
//! - [`plot`]: `metrics.jsonl` → `loss.png` after every run.
//! - [`dpo`]: DPO (sigmoid / IPO / hinge) with precomputed reference log-probs.
//! - [`embed`]: BERT sentence embeddings (all-MiniLM-L6-v2) for decontamination.
//!
//! Backend: burn's ndarray CPU backend under autodiff (feature `cuda` adds burn-cuda).
#![deny(missing_docs)]

pub mod bench;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
pub mod data;
pub mod dpo;
pub mod embed;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod optim;
pub mod plot;
pub mod sft;
pub mod weights;

pub use error::TrainError;

/// The CPU backend used by default: `Autodiff<NdArray<f32>>`.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

/// The CPU backend with burn's `BalancedCheckpointing` (`--gradient-checkpointing`).
pub type CpuBackendCheckpointed = burn::backend::Autodiff<burn::backend::NdArray<f32>, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>;

/// The CUDA backend with `BalancedCheckpointing` (feature `cuda`).
#[cfg(feature = "cuda")]
pub type CudaBackendCheckpointed = burn::backend::Autodiff<burn::backend::Cuda<f32>, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>;

/// The CPU backend without autodiff (inference: embeddings, generation).
pub type CpuInference = burn::backend::NdArray<f32>;

/// The CUDA backend (feature `cuda`; NVRTC at run time): `Autodiff<Cuda<f32>>`.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda<f32>>;

/// The CUDA backend without autodiff (feature `cuda`; inference: embeddings).
#[cfg(feature = "cuda")]
pub type CudaInference = burn::backend::Cuda<f32>;

/// Compute backend chosen at run time (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BackendKind {
    /// burn-ndarray on the CPU.
    Cpu,
    /// burn-cuda on NVIDIA GPU 0 (needs the `cuda` feature).
    Cuda,
}

/// Run SFT on the chosen backend. Errors: [`TrainError::Args`] when `Cuda` is asked for
/// and the binary was built without the `cuda` feature.
pub fn train_sft_on(kind: BackendKind, args: &sft::SftArgs) -> error::Result<sft::SftSummary> {
    #[cfg(feature = "cuda")]
    if kind == BackendKind::Cuda {
        configure_gpu_caches();
    }
    match kind {
        BackendKind::Cpu if args.gradient_checkpointing => sft::train_sft::<CpuBackendCheckpointed>(args, &Default::default()),
        BackendKind::Cpu => sft::train_sft::<CpuBackend>(args, &Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda if args.gradient_checkpointing => sft::train_sft::<CudaBackendCheckpointed>(args, &burn::backend::cuda::CudaDevice::new(0)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => sft::train_sft::<CudaBackend>(args, &burn::backend::cuda::CudaDevice::new(0)),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(TrainError::Args("this bagel was built without the `cuda` feature".into())),
    }
}

/// Run the SFT step benchmark ([`bench::bench_sft_step`]) on the chosen backend.
/// Errors: as [`train_sft_on`].
pub fn bench_sft_step_on(kind: BackendKind, args: &bench::StepBenchArgs) -> error::Result<bench::StepBenchReport> {
    #[cfg(feature = "cuda")]
    if kind == BackendKind::Cuda {
        configure_gpu_caches();
    }
    match kind {
        BackendKind::Cpu => bench::bench_sft_step::<CpuBackend>(args, &Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => bench::bench_sft_step::<CudaBackend>(args, &burn::backend::cuda::CudaDevice::new(0)),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(TrainError::Args("this bagel was built without the `cuda` feature".into())),
    }
}

/// Where compiled GPU kernels and autotune results are kept between runs, so that only
/// the first run on a machine pays for kernel compilation and autotuning (about 10 s for
/// the 0.85B benchmark model; bench/RESULTS.md): `$BAGEL_CACHE_DIR/cubecl`, else
/// `$XDG_CACHE_HOME/bagel/cubecl`, else `~/.cache/bagel/cubecl`. `None` when none of
/// these variables is set.
pub fn gpu_cache_dir() -> Option<std::path::PathBuf> {
    Some(bagel_core::cache_root()?.join("cubecl"))
}

/// Whether a CubeCL configuration file applies: `cubecl.toml`/`CubeCL.toml`, or a
/// `burn.toml`/`Burn.toml` with a `[cubecl…]` section, in the working directory or a
/// parent (CubeCL's own search).
pub fn user_cubecl_config() -> Option<std::path::PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        for name in ["cubecl.toml", "CubeCL.toml"] {
            if dir.join(name).is_file() {
                return Some(dir.join(name));
            }
        }
        for name in ["burn.toml", "Burn.toml"] {
            let p = dir.join(name);
            if std::fs::read_to_string(&p).is_ok_and(|t| t.lines().any(|l| l.trim_start().starts_with("[cubecl"))) {
                return Some(p);
            }
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// Point CubeCL's PTX cache and autotune cache at [`gpu_cache_dir`] (CubeCL keeps no PTX
/// and puts autotune results under the nearest Cargo `target/` by default), unless a
/// CubeCL configuration file applies ([`user_cubecl_config`]), which then wins, or
/// CubeCL's configuration was already read. Call before the first CUDA tensor is made;
/// later calls do nothing. Returns the directory used, if any.
#[cfg(feature = "cuda")]
pub fn configure_gpu_caches() -> Option<std::path::PathBuf> {
    use burn::cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
    static DONE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        if user_cubecl_config().is_some() || CubeClRuntimeConfig::storage().lock().is_some() {
            return None;
        }
        let dir = gpu_cache_dir()?;
        std::fs::create_dir_all(&dir).ok()?;
        let mut config = CubeClRuntimeConfig::default().override_from_env();
        config.compilation.cache = Some(CacheConfig::File(dir.clone()));
        config.autotune.cache = CacheConfig::File(dir.clone());
        CubeClRuntimeConfig::set(config);
        Some(dir)
    })
    .clone()
}
