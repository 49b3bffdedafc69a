//! Launching this module's element-wise CUDA C kernels ([`super::fused`], the fused AdamW)
//! on CubeCL's own stream, as "externally compiled kernels" (CubeCL's
//! `MetadataBindingInfo::custom`): CubeCL compiles the source with NVRTC (its options, its
//! PTX cache on disk) and launches the kernel in order with its own work, so these ops
//! need no ordering of their own, where a [`super::on_stream`] session needs two ordering
//! kernels (or two host waits).
//!
//! A kernel's parameters are the buffers of the tensors passed to [`launch`], in order,
//! then a device copy of its 32-bit scalar words when there are any (reused for the same words: [`param_buffer`]; `const unsigned* prm`; floats by their
//! bits). No CubeCL metadata is passed (the info block is empty); where the device takes
//! grid constants CubeCL still appends a pointer to that empty block, which the kernel does
//! not declare and `cuLaunchKernel` therefore ignores.
use super::*;
use burn_cubecl::cubecl::cuda::CudaCompiler;
use burn_cubecl::cubecl::prelude::{AddressType, CompiledKernel, CubeCount, CubeDim, ExecutionMode, KernelDefinition, KernelId, KernelMetadata, KernelOptions, Scope, StorageType};
use burn_cubecl::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn_cubecl::cubecl::{CompilationError, Compiler, CubeTask};
use std::sync::LazyLock;

/// The source CubeCL compiles: the shared helpers, the fused ops' kernels and AdamW.
static SOURCE: LazyLock<String> = LazyLock::new(|| format!("{}\n{}\n{}", attention::COMMON, fused::SRC, ADAMW_SRC));

/// FNV-1a of [`SOURCE`]: part of every kernel id, so CubeCL's on-disk PTX cache never
/// serves a kernel compiled from an older source.
static SOURCE_HASH: LazyLock<u64> = LazyLock::new(|| SOURCE.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)));

/// Marker type of the kernel ids.
struct BagelKernel;

/// One kernel of [`SOURCE`], by entry-point name, with its block size.
struct Task {
    name: &'static str,
    block: u32,
}

impl KernelMetadata for Task {
    fn name(&self) -> &'static str {
        self.name
    }

    fn id(&self) -> KernelId {
        KernelId::new::<BagelKernel>().info((self.name, *SOURCE_HASH)).cube_dim(CubeDim::new_1d(self.block))
    }

    fn address_type(&self) -> StorageType {
        AddressType::U32.unsigned_type()
    }
}

impl CubeTask<CudaCompiler> for Task {
    /// CubeCL wants its own representation beside the source (it reads the kernel's
    /// shared-memory size from it): that of an empty kernel (no dynamic shared memory;
    /// these kernels declare theirs statically), with this module's source and entry point.
    fn compile(
        &self,
        compiler: &mut CudaCompiler,
        options: &<CudaCompiler as Compiler>::CompilationOptions,
        mode: ExecutionMode,
        address_type: StorageType,
    ) -> Result<CompiledKernel<CudaCompiler>, CompilationError> {
        let cube_dim = CubeDim::new_1d(self.block);
        let empty = KernelDefinition { buffers: vec![], tensor_maps: vec![], scalars: vec![], cube_dim, body: Scope::root(false), options: KernelOptions::default() };
        let repr = compiler.compile(empty, options, mode, address_type)?;
        Ok(CompiledKernel { entrypoint_name: self.name.to_string(), debug_name: None, source: SOURCE.clone(), repr: Some(repr), cube_dim, debug_info: None })
    }
}

/// Queue kernel `name` of [`SOURCE`] on CubeCL's stream of the tensors' client: a grid of
/// `grid` blocks of `block` threads (1-D blocks); arguments: the tensors' buffers in order,
/// then the scalar words `params`. CubeCL orders it after the work that wrote the tensors
/// and before the work that reads its outputs, as any of its own kernels.
pub(super) fn launch(name: &'static str, grid: (u32, u32), block: u32, tensors: &[&Prim], params: &[u32]) {
    let first = tensors.first().expect("a kernel reads or writes a tensor");
    let mut buffers: Vec<_> = tensors.iter().map(|t| t.handle.clone().binding()).collect();
    if !params.is_empty() {
        buffers.push(param_buffer(&first.client, first.device.index, params).binding());
    }
    launch_with(&first.client, name, grid, block, buffers);
}

/// Most scalar-word buffers kept per thread by [`param_buffer`] before it starts afresh.
const PARAM_CACHE: usize = 4096;

/// A device buffer holding `params` on device `device`, reused for every launch with the
/// same words: each new buffer is an allocation and a copy queued on CubeCL's device
/// thread, and the words repeat (a fused op's sizes every step, AdamW's per parameter
/// shape within a step). Kept per thread, at most [`PARAM_CACHE`] of them (then all
/// dropped: CubeCL frees a buffer only after the work queued on it).
fn param_buffer(client: &burn_cubecl::cubecl::client::ComputeClient<burn_cubecl::cubecl::cuda::CudaRuntime>, device: usize, params: &[u32]) -> burn_cubecl::cubecl::server::Handle {
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<(usize, Vec<u32>), burn_cubecl::cubecl::server::Handle>> = std::cell::RefCell::new(std::collections::HashMap::new());
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let key = (device, params.to_vec());
        if let Some(h) = cache.get(&key) {
            return h.clone();
        }
        if cache.len() >= PARAM_CACHE {
            cache.clear();
        }
        let bytes: Vec<u8> = params.iter().flat_map(|w| w.to_le_bytes()).collect();
        let h = client.create_from_slice(&bytes);
        cache.insert(key, h.clone());
        h
    })
}

/// One block of `block` threads running kernel `name` on the raw CubeCL buffers `buffers`
/// and no scalar words (the ordering kernels of [`super::on_stream`]), on `client`'s stream.
pub(super) fn launch_buffers(client: &burn_cubecl::cubecl::client::ComputeClient<burn_cubecl::cubecl::cuda::CudaRuntime>, name: &'static str, block: u32, buffers: &[burn_cubecl::cubecl::server::Handle]) {
    launch_with(client, name, (1, 1), block, buffers.iter().map(|h| h.clone().binding()).collect());
}

/// [`launch`] on an explicit client and bindings (the scalar words' buffer, if any,
/// already last).
fn launch_with(client: &burn_cubecl::cubecl::client::ComputeClient<burn_cubecl::cubecl::cuda::CudaRuntime>, name: &'static str, grid: (u32, u32), block: u32, buffers: Vec<burn_cubecl::cubecl::server::Binding>) {
    let args = KernelArguments { buffers, info: MetadataBindingInfo::custom(vec![]), tensor_maps: vec![] };
    client.launch(Box::new(Task { name, block }), CubeCount::Static(grid.0, grid.1, 1), args);
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
}

/// Kernels launched by [`launch`] since the process started.
pub(super) static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// The two 32-bit words of `n` (low first), for kernels that take a 64-bit count.
pub(super) fn words(n: usize) -> [u32; 2] {
    let n = n as u64;
    [n as u32, (n >> 32) as u32]
}
