//! Selective Synaptic Dampening (Foster et al., 2024): parameters far more important to the
//! forget set than to the full training set are scaled down towards zero.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use unlearn_shared::api::{DampenStats, SsdSettings};
use unlearn_shared::model::weights::{is_statistic, ParamPath, StateDict};
use unlearn_shared::model::{NormStats, ResNet};

use super::batch::make_batch;
use super::flat::{self, FlatTensors};
use super::progress::{Cancelled, PhaseTimer, Progress};
use crate::data::Split;

/// Per-parameter importance: the mean over mini-batches of the squared gradient of the
/// batch-mean loss, flattened, by torchvision key. Running statistics have none.
pub struct Importance<B: Backend> {
    pub tensors: FlatTensors<B>,
}

struct AccumulateSquares<'a, B: AutodiffBackend> {
    path: ParamPath,
    grads: &'a B::Gradients,
    sums: &'a mut FlatTensors<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for AccumulateSquares<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = self.path.key();
        if is_statistic(&key) {
            return;
        }
        let Some(grad) = param.val().grad(self.grads) else { return };
        let square = grad.square().reshape([-1]);
        let sum = match self.sums.remove(&key) {
            Some(sum) => sum + square,
            None => square,
        };
        self.sums.insert(key, sum);
    }
}

/// Computes the importance over `indices` of `split`, in that order, BatchNorm in inference mode.
pub fn importance<B: AutodiffBackend>(
    model: &ResNet<B>,
    split: &Split,
    indices: &[usize],
    batch_size: usize,
    phase: &str,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Importance<B::InnerBackend>, Cancelled> {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut sums = FlatTensors::new();
    let mut timer = PhaseTimer::new(phase, indices.len() as u64);
    let batches = indices.len().div_ceil(batch_size).max(1);
    for (n, chunk) in indices.chunks(batch_size).enumerate() {
        if progress.cancelled() {
            return Err(Cancelled);
        }
        let batch = make_batch::<B>(split, chunk, None::<&mut rand_chacha::ChaCha8Rng>, device);
        let loss = loss_fn.forward(model.forward(batch.images, NormStats::Running), batch.labels);
        let grads = loss.backward();
        model.visit(&mut AccumulateSquares::<B> { path: ParamPath::default(), grads: &grads, sums: &mut sums });
        if n % 16 == 0 || n + 1 == batches {
            timer.add_loss(loss.into_scalar().elem::<f64>());
            progress.report(&timer.event((n * batch_size + chunk.len()) as u64));
        }
    }
    let tensors = sums.into_iter().map(|(key, sum)| (key, sum / batches as f64)).collect();
    Ok(Importance { tensors })
}

impl<B: Backend> Importance<B> {
    pub fn to_state_dict(&self) -> StateDict {
        flat::to_state_dict(&self.tensors)
    }

    pub fn from_state_dict(tensors: StateDict, device: &B::Device) -> Self {
        Self { tensors: flat::from_state_dict(tensors, device) }
    }
}

struct Dampen<'a, B: Backend> {
    path: ParamPath,
    forget: &'a Importance<B>,
    full: &'a Importance<B>,
    settings: &'a SsdSettings,
    stats: DampenStats,
}

impl<B: Backend> ModuleMapper<B> for Dampen<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = self.path.key();
        let (Some(forget), Some(full)) = (self.forget.tensors.get(&key), self.full.tensors.get(&key)) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let selected = forget.clone().greater(full.clone() * self.settings.alpha);
        let beta = (full.clone() * self.settings.lambda / forget.clone()).clamp_max(1.0);
        let factor = Tensor::ones_like(&beta).mask_where(selected.clone(), beta);
        self.stats.selected += selected.int().sum().into_scalar().elem::<i64>() as u64;
        self.stats.total += shape.num_elements() as u64;
        Param::from_mapped_value(id, tensor * factor.reshape(shape), mapper)
    }
}

/// Scales each parameter where `imp_forget > alpha * imp_full` by
/// `min(lambda * imp_full / imp_forget, 1)`; BatchNorm running statistics are never touched.
pub fn dampen<B: Backend>(
    model: ResNet<B>,
    forget: &Importance<B>,
    full: &Importance<B>,
    settings: &SsdSettings,
) -> (ResNet<B>, DampenStats) {
    let mut mapper = Dampen { path: ParamPath::default(), forget, full, settings, stats: DampenStats { selected: 0, total: 0 } };
    let model = model.map(&mut mapper);
    (model, mapper.stats)
}
