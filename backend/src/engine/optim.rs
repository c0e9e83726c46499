//! SGD with PyTorch's semantics (`torch.optim.SGD`): weight decay added to the gradient,
//! momentum buffer initialised with the first gradient, optional dampening and Nesterov.
//!
//! Its state is keyed by torchvision key, not by Burn's `ParamId`, so that a training
//! checkpoint is a plain safetensors file that any fresh model can resume from.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use unlearn_shared::api::SgdConfig;
use unlearn_shared::model::weights::{is_statistic, map_keyed, KeyedMapper, StateDict};
use unlearn_shared::model::ResNet;

use super::flat::{self, FlatTensors};

pub(crate) struct Sgd<B: Backend> {
    config: SgdConfig,
    /// Momentum buffers, flattened.
    velocity: FlatTensors<B>,
}

struct Step<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    config: SgdConfig,
    velocity: &'a mut FlatTensors<B::InnerBackend>,
}

impl<B: AutodiffBackend> KeyedMapper<B> for Step<'_, B> {
    fn map<const D: usize>(&mut self, key: &str, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if is_statistic(key) {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = tensor.grad(self.grads) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let value = tensor.inner();
        let shape = value.shape();
        let c = self.config;
        let mut grad = grad.reshape([-1]);
        let flat = value.clone().reshape([-1]);
        if c.weight_decay != 0.0 {
            grad = grad + flat.clone() * c.weight_decay;
        }
        if c.momentum != 0.0 {
            let buffer = match self.velocity.remove(key) {
                Some(v) => v * c.momentum + grad.clone() * (1.0 - c.dampening),
                None => grad.clone(),
            };
            grad = if c.nesterov { grad + buffer.clone() * c.momentum } else { buffer.clone() };
            self.velocity.insert(key.to_owned(), buffer);
        }
        let updated = (flat - grad * c.lr).reshape(shape);
        Param::from_mapped_value(id, Tensor::from_inner(updated).require_grad(), mapper)
    }
}

impl<B: Backend> Sgd<B> {
    pub(crate) fn new(config: SgdConfig) -> Self {
        Self { config, velocity: FlatTensors::new() }
    }

    /// Applies one update to every parameter that has a gradient.
    pub(crate) fn step<AB: AutodiffBackend<InnerBackend = B>>(&mut self, model: ResNet<AB>, grads: &AB::Gradients) -> ResNet<AB> {
        let mut step = Step::<AB> { grads, config: self.config, velocity: &mut self.velocity };
        map_keyed(model, &mut step)
    }

    pub(crate) fn state(&self) -> StateDict {
        flat::to_state_dict(&self.velocity)
    }

    pub(crate) fn load_state(&mut self, state: StateDict, device: &B::Device) {
        self.velocity = flat::from_state_dict(state, device);
    }
}
