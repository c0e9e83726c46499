//! BatchNorm whose statistics are chosen by the caller, not by the backend.
//!
//! Burn's own BatchNorm uses batch statistics whenever the backend is autodiff, but SSD needs
//! gradients through the network as it runs at inference, i.e. with the running statistics.

use burn::module::{Module, Param, RunningState};
use burn::prelude::*;

/// Which statistics a forward pass normalises with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormStats {
    /// Statistics of the current batch; running statistics are updated (training).
    Batch,
    /// The running statistics, left untouched (evaluation, and SSD's importances).
    Running,
}

#[derive(Config, Debug)]
pub struct BatchNormConfig {
    pub num_features: usize,
    #[config(default = 1e-5)]
    pub epsilon: f64,
    #[config(default = 0.1)]
    pub momentum: f64,
}

/// 2-d batch normalisation with PyTorch's field names and update rule.
#[derive(Module, Debug)]
pub struct BatchNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub running_mean: RunningState<Tensor<B, 1>>,
    pub running_var: RunningState<Tensor<B, 1>>,
    pub momentum: f64,
    pub epsilon: f64,
}

impl BatchNormConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> BatchNorm<B> {
        let n = self.num_features;
        BatchNorm {
            weight: Param::from_tensor(Tensor::ones([n], device)),
            bias: Param::from_tensor(Tensor::zeros([n], device)),
            running_mean: RunningState::new(Tensor::zeros([n], device)),
            running_var: RunningState::new(Tensor::ones([n], device)),
            momentum: self.momentum,
            epsilon: self.epsilon,
        }
    }
}

impl<B: Backend> BatchNorm<B> {
    /// `input`: `[batch, channels, height, width]`.
    pub fn forward(&self, input: Tensor<B, 4>, stats: NormStats) -> Tensor<B, 4> {
        let (mean, var) = match stats {
            NormStats::Running => (self.running_mean.value().reshape([1, -1, 1, 1]), self.running_var.value().reshape([1, -1, 1, 1])),
            NormStats::Batch => self.batch_stats(&input),
        };
        let scale = self.weight.val().reshape([1, -1, 1, 1]) / (var + self.epsilon).sqrt();
        let shift = self.bias.val().reshape([1, -1, 1, 1]) - mean * scale.clone();
        input * scale + shift
    }

    /// Biased batch variance normalises; the unbiased one feeds the running average, as PyTorch.
    fn batch_stats(&self, input: &Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, channels, height, width] = input.dims();
        let count = batch * height * width;
        let per_channel = input.clone().swap_dims(0, 1).reshape([channels, count]);
        let mean = per_channel.clone().mean_dim(1);
        let var = (per_channel - mean.clone()).square().mean_dim(1);

        let unbiased = var.clone().detach() * (count as f64 / (count.max(2) - 1) as f64);
        let m = self.momentum;
        let running_mean = self.running_mean.value_sync() * (1.0 - m) + mean.clone().detach().reshape([channels]) * m;
        let running_var = self.running_var.value_sync() * (1.0 - m) + unbiased.reshape([channels]) * m;
        self.running_mean.update(running_mean.detach());
        self.running_var.update(running_var.detach());

        (mean.reshape([1, channels, 1, 1]), var.reshape([1, channels, 1, 1]))
    }
}
