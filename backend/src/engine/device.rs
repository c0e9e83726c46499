//! Choosing the backend at run time: the engine is generic over Burn backends, and this is
//! the one place that names concrete ones.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// The CPU backend: measured faster than NdArray for ResNet18 (see README).
pub(crate) type CpuBackend = burn::backend::Flex;

/// A device of backend `B`, with the backend's name for reports (`cuda`, `wgpu`, `cpu`).
pub(crate) struct Device<B: Backend> {
    pub(crate) handle: B::Device,
    pub(crate) name: &'static str,
}

impl<B: Backend> Clone for Device<B> {
    fn clone(&self) -> Self {
        Self { handle: self.handle.clone(), name: self.name }
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

/// Runs a tiny computation to find out whether a backend works, without letting its panic
/// out. Backends often fail on a worker thread, so the first panic message anywhere is kept.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn self_test<B: Backend>(device: &B::Device) -> Result<(), String> {
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let record = first_panic.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut first = record.lock().unwrap_or_else(|e| e.into_inner());
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
        first.get_or_insert_with(|| message.unwrap_or_else(|| info.to_string()));
    }));
    let result = catch_unwind(AssertUnwindSafe(|| Tensor::<B, 1>::ones([4], device).sum().into_scalar().elem::<f32>()));
    std::panic::set_hook(hook);
    match result {
        Ok(4.0) => Ok(()),
        Ok(sum) => Err(format!("a self-test computed 4 as {sum}")),
        Err(_) => Err(first_panic.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| "it panicked".into())),
    }
}

fn run_cpu<W: Workload>(workload: W) -> W::Output {
    workload.run::<Autodiff<CpuBackend>>(Device { handle: Default::default(), name: "cpu" })
}

/// Runs `workload` on `B` if a self-test computation works there; hands it back otherwise.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn try_backend<B: Backend, W: Workload>(handle: B::Device, name: &'static str, workload: W) -> Result<W::Output, (W, String)> {
    match self_test::<B>(&handle) {
        Ok(()) => Ok(workload.run::<Autodiff<B>>(Device { handle, name })),
        Err(why) => Err((workload, why)),
    }
}

#[cfg(feature = "cuda")]
fn try_cuda<W: Workload>(workload: W) -> Result<W::Output, (W, String)> {
    try_backend::<burn::backend::Cuda, W>(Default::default(), "cuda", workload)
}

#[cfg(not(feature = "cuda"))]
fn try_cuda<W: Workload>(workload: W) -> Result<W::Output, (W, String)> {
    Err((workload, DeviceError::NotCompiled(DeviceChoice::Cuda).to_string()))
}

#[cfg(feature = "wgpu")]
fn try_wgpu<W: Workload>(workload: W) -> Result<W::Output, (W, String)> {
    try_backend::<burn::backend::Wgpu, W>(Default::default(), "wgpu", workload)
}

#[cfg(not(feature = "wgpu"))]
fn try_wgpu<W: Workload>(workload: W) -> Result<W::Output, (W, String)> {
    Err((workload, DeviceError::NotCompiled(DeviceChoice::Wgpu).to_string()))
}

/// Runs `workload` on the chosen device; `Auto` falls back to the CPU with a log line.
pub(crate) fn run<W: Workload>(choice: DeviceChoice, workload: W) -> Result<W::Output, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(run_cpu(workload)),
        DeviceChoice::Cuda => try_cuda(workload).map_err(|(_, why)| DeviceError::Unavailable(choice, why)),
        DeviceChoice::Wgpu => try_wgpu(workload).map_err(|(_, why)| DeviceError::Unavailable(choice, why)),
        DeviceChoice::Auto => {
            let (workload, cuda) = match try_cuda(workload) {
                Ok(output) => return Ok(output),
                Err(failure) => failure,
            };
            let (workload, wgpu) = match try_wgpu(workload) {
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
