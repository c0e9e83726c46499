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
        let [batch, ..] = input.dims();
        let (mean, var) = match stats {
            NormStats::Running => (self.running_mean.value(), self.running_var.value()),
            NormStats::Batch => self.batch_stats(&input),
        };
        let scale = self.weight.val() / (var + self.epsilon).sqrt();
        let shift = self.bias.val() - mean * scale.clone();
        input * per_image(scale, batch) + per_image(shift, batch)
    }

    /// Per-channel mean and biased variance `[channels]` of the batch; the unbiased variance
    /// feeds the running average, as PyTorch.
    fn batch_stats(&self, input: &Tensor<B, 4>) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let [batch, channels, height, width] = input.dims();
        let count = batch * height * width;
        let channel_mean = |x: Tensor<B, 4>| x.reshape([batch, channels, height * width]).sum_dim(2).sum_dim(0).reshape([channels]) / count as f64;
        let mean = channel_mean(input.clone());
        let var = channel_mean((input.clone() - per_image(mean.clone(), batch)).square());

        let unbiased = var.clone().detach() * (count as f64 / (count.max(2) - 1) as f64);
        let m = self.momentum;
        let running_mean = self.running_mean.value_sync() * (1.0 - m) + mean.clone().detach() * m;
        let running_var = self.running_var.value_sync() * (1.0 - m) + unbiased * m;
        self.running_mean.update(running_mean.detach());
        self.running_var.update(running_var.detach());

        (mean, var)
    }
}

/// A per-channel value `[channels]` as `[batch, channels, 1, 1]`, laid out in memory: Flex
/// broadcasts one stored scalar per (image, channel) plane with SIMD, but walks a
/// `[1, channels, 1, 1]` view element by element on one thread.
fn per_image<B: Backend>(values: Tensor<B, 1>, batch: usize) -> Tensor<B, 4> {
    values.reshape([1, -1, 1, 1]).repeat_dim(0, batch)
}
