//! Choosing the backend at run time: the engine is generic over Burn backends, and this is
//! the one place that names concrete ones.
//!
//! GPU devices are listed before Burn sets one up: Burn 0.21 starts a thread for each device it
//! sets up, even one that then fails, that lives as long as the process and wakes every 150 µs
//! (cubecl-common 0.10's device channel), which slowed the CPU fallback (docs/performance.md).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex, Once};

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use cubecl_runtime::config::cache::CacheConfig;
use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

/// The CPU backend: measured faster than NdArray for ResNet18 (see README).
pub(crate) type CpuBackend = burn::backend::Flex;

/// A device of backend `B`, with what reports say of it.
pub(crate) struct Device<B: Backend> {
    pub(crate) handle: B::Device,
    /// The backend (`cuda`, `wgpu` or `cpu`) and, for wgpu, its adapter:
    /// `wgpu (llvmpipe (LLVM 15.0.6, 256 bits), software)`.
    pub(crate) description: String,
    pub(crate) processor: Processor,
}

/// What does the arithmetic, which decides how much work a default request can afford.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Processor {
    Gpu,
    /// The CPU backend, or a software GPU such as Mesa's llvmpipe.
    Cpu,
}

impl<B: Backend> Clone for Device<B> {
    fn clone(&self) -> Self {
        Self { handle: self.handle.clone(), description: self.description.clone(), processor: self.processor }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeviceChoice {
    /// The first of CUDA, then Vulkan, that works; otherwise the CPU.
    Auto,
    Cuda,
    /// Burn's wgpu backend (Vulkan on Linux); `vulkan` is the same.
    #[value(alias = "vulkan")]
    Wgpu,
    Cpu,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
            Self::Cpu => "cpu",
        })
    }
}

/// Keeps the GPU backends' caches (autotune results, compiled kernels) in `dir` instead of
/// the `target` folder CubeCL would look for above the working directory, so that they
/// survive between runs wherever the workbench is started. A `cubecl.toml` that names its
/// own cache locations keeps them. Call before any GPU work; only the first call counts.
pub(crate) fn keep_gpu_caches_in(dir: &Path) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if matches!(config.autotune.cache, CacheConfig::Target) {
            config.autotune.cache = CacheConfig::File(dir.join("autotune"));
        }
        config.compilation.cache.get_or_insert_with(|| CacheConfig::File(dir.join("kernels")));
        CubeClRuntimeConfig::set(config);
    });
}

/// Work that runs on whichever backend was chosen.
pub(crate) trait Workload {
    type Output;
    fn run<B: AutodiffBackend>(self, device: Device<B>) -> Self::Output;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DeviceError {
    #[cfg(not(all(feature = "cuda", feature = "wgpu")))]
    #[error("the {0} backend is not compiled into this binary (cargo feature `{0}`)")]
    NotCompiled(DeviceChoice),
    #[error("the {0} device does not work here: {1}")]
    Unavailable(DeviceChoice, String),
}

/// Runs `f`, turning a panic into its message. Backends often fail on a worker thread, so
/// the first panic message anywhere is kept.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let record = first_panic.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut first = record.lock().unwrap_or_else(|e| e.into_inner());
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
        first.get_or_insert_with(|| message.unwrap_or_else(|| info.to_string()));
    }));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|_| first_panic.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| "it panicked".into()))
}

/// Runs a tiny computation to find out whether a backend works, without letting its panic out.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn self_test<B: Backend>(device: &B::Device) -> Result<(), String> {
    match catching_panics(|| Tensor::<B, 1>::ones([4], device).sum().into_scalar().elem::<f32>())? {
        4.0 => Ok(()),
        sum => Err(format!("a self-test computed 4 as {sum}")),
    }
}

fn run_cpu<W: Workload>(workload: W) -> W::Output {
    workload.run::<Autodiff<CpuBackend>>(Device { handle: Default::default(), description: "cpu".into(), processor: Processor::Cpu })
}

/// Runs `workload` on `B` if a self-test computation works there; hands it back otherwise.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn try_backend<B: Backend, W: Workload>(device: Device<Autodiff<B>>, workload: W) -> Result<W::Output, (W, String)> {
    match self_test::<B>(&device.handle) {
        Ok(()) => Ok(workload.run::<Autodiff<B>>(device)),
        Err(why) => Err((workload, why)),
    }
}

/// Whether the CUDA driver loads and lists a device, asked without Burn.
#[cfg(feature = "cuda")]
fn cuda_device_listed() -> Result<(), String> {
    match catching_panics(cudarc::driver::CudaContext::device_count)? {
        Ok(0) => Err("the CUDA driver lists no device".into()),
        Ok(_) => Ok(()),
        Err(error) => Err(format!("the CUDA driver: {error}")),
    }
}

#[cfg(feature = "cuda")]
fn try_cuda<W: Workload>(workload: W) -> Result<W::Output, (W, String)> {
    if let Err(why) = cuda_device_listed() {
        return Err((workload, why));
    }
    let device = Device { handle: Default::default(), description: "cuda".into(), processor: Processor::Gpu };
    try_backend::<burn::backend::Cuda, W>(device, workload)
}

#[cfg(not(feature = "cuda"))]
fn try_cuda<W: Workload>(workload: W) -> Result<W::Output, (W, String)> {
    Err((workload, DeviceError::NotCompiled(DeviceChoice::Cuda).to_string()))
}

/// The physical device behind Burn's default wgpu device.
#[cfg(feature = "wgpu")]
#[derive(Debug, Clone)]
struct Adapter {
    name: String,
    /// A GPU emulated on the CPU, such as Mesa's llvmpipe (lavapipe).
    software: bool,
}

#[cfg(feature = "wgpu")]
impl From<wgpu::AdapterInfo> for Adapter {
    fn from(info: wgpu::AdapterInfo) -> Self {
        Self { software: info.device_type == wgpu::DeviceType::Cpu, name: info.name }
    }
}

/// Asks wgpu for the adapter Burn's default device uses, setting that device up as Burn
/// would on first use (same graphics API, same options). Asked once per process.
#[cfg(feature = "wgpu")]
fn wgpu_adapter() -> Result<Adapter, String> {
    use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup, RuntimeOptions, WgpuDevice};
    static FOUND: std::sync::OnceLock<Result<Adapter, String>> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| {
        catching_panics(|| Adapter::from(init_setup::<AutoGraphicsApi>(&WgpuDevice::DefaultDevice, RuntimeOptions::default()).adapter.get_info()))
    });
    found.clone()
}

/// The adapters wgpu lists for Burn's graphics API, asked without Burn.
#[cfg(feature = "wgpu")]
fn listed_adapters() -> Result<Vec<Adapter>, String> {
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
    use futures_util::FutureExt;
    let backends = AutoGraphicsApi::backend().into();
    catching_panics(|| {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends, ..wgpu::InstanceDescriptor::new_without_display_handle() });
        // Native wgpu lists its adapters at once; the future is for the web's.
        let adapters = instance.enumerate_adapters(backends).now_or_never().ok_or("wgpu did not list its adapters at once")?;
        Ok(adapters.iter().map(|adapter| Adapter::from(adapter.get_info())).collect())
    })?
}

#[cfg(feature = "wgpu")]
const NO_ADAPTER: &str = "wgpu finds no adapter for Burn's graphics API (Vulkan on Linux): no driver for it is installed, or none lists a device";

/// Which wgpu adapters a choice takes.
#[derive(Debug, Clone, Copy)]
enum AdapterRule {
    /// `--device wgpu`: whatever Burn's default device finds.
    Any,
    /// `auto`: a software adapter computes on the same cores as the CPU backend, many times
    /// slower, so it is passed over.
    HardwareOnly,
}

#[cfg(feature = "wgpu")]
impl AdapterRule {
    fn check(self, adapter: &Adapter) -> Result<(), String> {
        match (self, adapter.software) {
            (Self::HardwareOnly, true) => Err(format!("its adapter, {}, is a software renderer, slower than the CPU backend", adapter.name)),
            _ => Ok(()),
        }
    }

    /// Whether `adapters` hold one the rule takes, and if not, why.
    fn takes_any(self, adapters: &[Adapter]) -> Result<(), String> {
        let mut refusals = Vec::new();
        for adapter in adapters {
            match self.check(adapter) {
                Ok(()) => return Ok(()),
                Err(why) => refusals.push(why),
            }
        }
        if refusals.is_empty() {
            Err(NO_ADAPTER.into())
        } else {
            Err(refusals.join("; "))
        }
    }
}

/// Runs `workload` on wgpu's default adapter if `rule` takes it and it works.
#[cfg(feature = "wgpu")]
fn try_wgpu<W: Workload>(workload: W, rule: AdapterRule) -> Result<W::Output, (W, String)> {
    if let Err(why) = listed_adapters().and_then(|adapters| rule.takes_any(&adapters)) {
        return Err((workload, why));
    }
    let adapter = match wgpu_adapter().and_then(|adapter| rule.check(&adapter).map(|()| adapter)) {
        Ok(adapter) => adapter,
        Err(why) => return Err((workload, why)),
    };
    let (processor, kind) = match adapter.software {
        true => (Processor::Cpu, ", software"),
        false => (Processor::Gpu, ""),
    };
    let device = Device { handle: Default::default(), description: format!("wgpu ({}{kind})", adapter.name), processor };
    try_backend::<burn::backend::Wgpu, W>(device, workload)
}

#[cfg(not(feature = "wgpu"))]
fn try_wgpu<W: Workload>(workload: W, _: AdapterRule) -> Result<W::Output, (W, String)> {
    Err((workload, DeviceError::NotCompiled(DeviceChoice::Wgpu).to_string()))
}

/// Runs `workload` on the chosen device; `Auto` takes the first of CUDA and a hardware wgpu
/// adapter that works, and otherwise falls back to the CPU with a log line saying why.
pub(crate) fn run<W: Workload>(choice: DeviceChoice, workload: W) -> Result<W::Output, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(run_cpu(workload)),
        DeviceChoice::Cuda => try_cuda(workload).map_err(|(_, why)| DeviceError::Unavailable(choice, why)),
        DeviceChoice::Wgpu => try_wgpu(workload, AdapterRule::Any).map_err(|(_, why)| DeviceError::Unavailable(choice, why)),
        DeviceChoice::Auto => {
            let (workload, cuda) = match try_cuda(workload) {
                Ok(output) => return Ok(output),
                Err(failure) => failure,
            };
            let (workload, wgpu) = match try_wgpu(workload, AdapterRule::HardwareOnly) {
                Ok(output) => return Ok(output),
                Err(failure) => failure,
            };
            tracing::warn!(cuda = %first_line(&cuda), wgpu = %first_line(&wgpu), "no GPU backend works; running on the CPU");
            Ok(run_cpu(workload))
        }
    }
}

/// The gist of a backend's failure, short enough for one log line.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports what the chosen device is, computing nothing.
    struct Describe;

    impl Workload for Describe {
        type Output = (String, Processor);
        fn run<B: AutodiffBackend>(self, device: Device<B>) -> Self::Output {
            (device.description, device.processor)
        }
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn auto_passes_over_software_adapters_and_wgpu_takes_any() {
        let llvmpipe = Adapter { name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(), software: true };
        let gpu = Adapter { name: "NVIDIA H200".into(), software: false };
        let refusal = AdapterRule::HardwareOnly.check(&llvmpipe).unwrap_err();
        assert!(refusal.contains("llvmpipe") && refusal.contains("software"), "{refusal}");
        assert!(AdapterRule::HardwareOnly.check(&gpu).is_ok());
        assert!(AdapterRule::Any.check(&llvmpipe).is_ok() && AdapterRule::Any.check(&gpu).is_ok());
        let listed = [llvmpipe.clone(), gpu];
        assert!(AdapterRule::HardwareOnly.takes_any(&listed).is_ok(), "a GPU beside a software adapter");
        let refusal = AdapterRule::HardwareOnly.takes_any(&listed[..1]).unwrap_err();
        assert!(refusal.contains("llvmpipe") && refusal.contains("software renderer"), "{refusal}");
        assert!(AdapterRule::Any.takes_any(&listed[..1]).is_ok());
        assert_eq!(AdapterRule::Any.takes_any(&[]), Err(NO_ADAPTER.into()));
    }

    /// Where this runs (CI: no CUDA driver, Mesa's software Vulkan device), an explicit CUDA
    /// choice fails with the reason, and `auto` falls back to the CPU unless a hardware GPU
    /// works.
    #[cfg(all(feature = "cuda", feature = "wgpu"))]
    #[test]
    fn without_a_cuda_driver_cuda_fails_with_its_reason_and_auto_falls_back() {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            eprintln!("skipped: this machine has an NVIDIA driver");
            return;
        }
        crate::testing::keep_gpu_caches();
        match run(DeviceChoice::Cuda, Describe) {
            Err(DeviceError::Unavailable(DeviceChoice::Cuda, why)) => assert!(!why.is_empty()),
            Err(other) => panic!("expected the CUDA device to be unavailable, got {other}"),
            Ok(described) => panic!("CUDA worked without a driver: {described:?}"),
        }
        let hardware_wgpu = matches!(wgpu_adapter(), Ok(Adapter { software: false, .. }));
        let (description, processor) = run(DeviceChoice::Auto, Describe).expect("auto always runs");
        match hardware_wgpu {
            true => assert!(description.starts_with("wgpu (") && processor == Processor::Gpu, "{description}"),
            false => assert_eq!((description.as_str(), processor), ("cpu", Processor::Cpu)),
        }
    }
}
