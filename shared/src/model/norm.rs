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
        #[cfg(feature = "flex-kernels")]
        let input = match flex::forward(self, input, stats) {
            Ok(output) => return output,
            Err(input) => input,
        };
        self.forward_with_tensor_ops(input, stats)
    }

    /// [`Self::forward`] as Burn's tensor operations: on every backend but the CPU one.
    fn forward_with_tensor_ops(&self, input: Tensor<B, 4>, stats: NormStats) -> Tensor<B, 4> {
        let [batch, ..] = input.dims();
        let (mean, var) = match stats {
            NormStats::Running => (self.running_mean.value(), self.running_var.value()),
            NormStats::Batch => {
                let (mean, var) = batch_stats(&input);
                self.update_running(mean.clone().detach(), var.clone().detach(), &input);
                (mean, var)
            }
        };
        let scale = self.weight.val() / (var + self.epsilon).sqrt();
        let shift = self.bias.val() - mean * scale.clone();
        input * per_image(scale, batch) + per_image(shift, batch)
    }

    /// Moves the running statistics towards a batch's mean and biased variance `[channels]`;
    /// the unbiased variance feeds the running average, as in PyTorch.
    fn update_running(&self, mean: Tensor<B, 1>, var: Tensor<B, 1>, input: &Tensor<B, 4>) {
        let [batch, _, height, width] = input.dims();
        let count = batch * height * width;
        let unbiased = var * (count as f64 / (count.max(2) - 1) as f64);
        let m = self.momentum;
        let running_mean = self.running_mean.value_sync() * (1.0 - m) + mean * m;
        let running_var = self.running_var.value_sync() * (1.0 - m) + unbiased * m;
        self.running_mean.update(running_mean.detach());
        self.running_var.update(running_var.detach());
    }
}

/// Per-channel mean and biased variance `[channels]` of a batch.
fn batch_stats<B: Backend>(input: &Tensor<B, 4>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [batch, channels, height, width] = input.dims();
    let count = batch * height * width;
    let channel_mean = |x: Tensor<B, 4>| x.reshape([batch, channels, height * width]).sum_dim(2).sum_dim(0).reshape([channels]) / count as f64;
    let mean = channel_mean(input.clone());
    let var = channel_mean((input.clone() - per_image(mean.clone(), batch)).square());
    (mean, var)
}

/// A per-channel value `[channels]` as `[batch, channels, 1, 1]`, laid out in memory: Flex
/// broadcasts one stored scalar per (image, channel) plane with SIMD, but walks a
/// `[1, channels, 1, 1]` view element by element on one thread.
fn per_image<B: Backend>(values: Tensor<B, 1>, batch: usize) -> Tensor<B, 4> {
    values.reshape([1, -1, 1, 1]).repeat_dim(0, batch)
}

/// BatchNorm on Flex as a few fused passes over plain slices, with a gradient node of its
/// own: Burn's tensor operations made about twenty passes over each activation in a
/// training step (statistics, broadcasts, and the autodiff graph of each).
#[cfg(feature = "flex-kernels")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::NodeId;
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::prelude::*;
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{DType, TensorData, TensorPrimitive};

    use super::super::flex::{cast, OnFlex, Training};
    use super::{BatchNorm, NormStats};
    use planes::Planes;

    /// `Ok` with `norm`'s output (the running statistics updated as `stats` asks) when `B` is
    /// Flex or `Autodiff<Flex>` and every tensor is f32, else `Err` with `input`.
    pub(super) fn forward<B: Backend>(norm: &BatchNorm<B>, input: Tensor<B, 4>, stats: NormStats) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        let Some(on) = OnFlex::of::<B>() else { return Err(input) };
        let [_, channel_count, ..] = input.dims();
        if input.shape().num_elements() == 0 {
            return Err(input);
        }
        // Per-channel values of the input's channel count, else Burn's to compute or refuse.
        let values = |tensor: Tensor<B, 1>| tensor.into_data().into_vec::<f32>().ok().filter(|values| values.len() == channel_count);
        let (Some(gamma), Some(beta)) = (values(norm.weight.val()), values(norm.bias.val())) else { return Err(input) };
        let given = match stats {
            NormStats::Running => match (values(norm.running_mean.value()), values(norm.running_var.value())) {
                (Some(mean), Some(var)) => Some(Moments { mean, var }),
                _ => return Err(input),
            },
            NormStats::Batch => None,
        };
        let device = input.device();
        let channels = Channels { gamma, beta, epsilon: norm.epsilon as f32 };
        let (output, moments) = match on {
            OnFlex::Training => {
                let x = cast::<B, Training, 4>(input.clone()).into_primitive().tensor();
                if x.primitive.dtype() != DType::F32 {
                    return Err(input);
                }
                let [weight, bias] = [norm.weight.val(), norm.bias.val()].map(|t| cast::<B, Training, 1>(t).into_primitive().tensor());
                let (output, moments) = normalize_tracked(x, weight, bias, channels, given);
                (cast(Tensor::<Training, 4>::from_primitive(TensorPrimitive::Float(output))), moments)
            }
            OnFlex::Plain => {
                let x = cast::<B, Flex, 4>(input.clone()).into_primitive().tensor();
                if x.dtype() != DType::F32 {
                    return Err(input);
                }
                let (output, moments, _) = normalize(&x, &channels, given);
                (cast(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(output))), moments)
            }
        };
        if stats == NormStats::Batch {
            let [mean, var] = [moments.mean, moments.var].map(|values| Tensor::<B, 1>::from_data(TensorData::new(values, [channel_count]), &device));
            norm.update_running(mean, var, &input);
        }
        Ok(output)
    }

    /// Per-channel mean and biased variance.
    #[derive(Debug, Clone)]
    struct Moments {
        mean: Vec<f32>,
        var: Vec<f32>,
    }

    /// BatchNorm's learned per-channel values.
    #[derive(Debug, Clone)]
    struct Channels {
        gamma: Vec<f32>,
        beta: Vec<f32>,
        epsilon: f32,
    }

    /// What the gradients need besides the input: where the moments came from (from the
    /// batch, they depend on the input), and the per-channel values the forward pass used.
    #[derive(Debug, Clone)]
    struct Normalized {
        stats: NormStats,
        mean: Vec<f32>,
        inverse_std: Vec<f32>,
        gamma: Vec<f32>,
    }

    /// `x` normalised by `given` moments, or by its own; returns the output, the moments
    /// used and what the gradients need.
    fn normalize(x: &FlexTensor, channels: &Channels, given: Option<Moments>) -> (FlexTensor, Moments, Normalized) {
        let x = x.to_contiguous();
        let planes = Planes::of(&x);
        let values = x.as_slice::<f32>().expect("contiguous f32");
        let stats = if given.is_some() { NormStats::Running } else { NormStats::Batch };
        let moments = given.unwrap_or_else(|| {
            let (mean, var) = planes.moments(values);
            Moments { mean, var }
        });
        let inverse_std: Vec<f32> = moments.var.iter().map(|var| 1.0 / (var + channels.epsilon).sqrt()).collect();
        let scale: Vec<f32> = channels.gamma.iter().zip(&inverse_std).map(|(gamma, inverse_std)| gamma * inverse_std).collect();
        let shift: Vec<f32> = channels.beta.iter().zip(&moments.mean).zip(&scale).map(|((beta, mean), scale)| beta - mean * scale).collect();
        let output = planes.affine(values, &scale, &shift);
        let normalized = Normalized { stats, mean: moments.mean.clone(), inverse_std, gamma: channels.gamma.clone() };
        (FlexTensor::from_data(TensorData::new(output, x.layout().shape().dims::<4>())), moments, normalized)
    }

    /// [`normalize`] as one node of the autodiff graph, with `weight` (gamma) and `bias`
    /// (beta) its parents besides `x`.
    fn normalize_tracked(
        x: FloatTensor<Training>,
        weight: FloatTensor<Training>,
        bias: FloatTensor<Training>,
        channels: Channels,
        given: Option<Moments>,
    ) -> (FloatTensor<Training>, Moments) {
        let (output, moments, normalized) = normalize(&x.primitive, &channels, given);
        let output = match Normalization.prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone(), bias.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), normalized);
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        (output, moments)
    }

    #[derive(Debug)]
    struct Normalization;

    impl Backward<Flex, 3> for Normalization {
        type State = (NodeId, Normalized);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let [node_x, node_gamma, node_beta] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (x_state, normalized) = ops.state;
            let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state).to_contiguous();
            let planes = Planes::of(&x);
            let [x_values, grad_values] = [&x, &grad].map(|t| t.as_slice::<f32>().expect("contiguous f32"));
            // Per channel: the sum of the output gradient (beta's gradient), and its sum
            // against the normalised input (gamma's).
            let (grad_sums, centred_sums) = planes.gradient_sums(grad_values, x_values, &normalized.mean);
            let gamma_grad: Vec<f32> = centred_sums.iter().zip(&normalized.inverse_std).map(|(sum, inverse_std)| sum * inverse_std).collect();
            if let Some(node) = node_x {
                let input_grad = planes.input_gradient(grad_values, x_values, &normalized, &grad_sums, &gamma_grad);
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(input_grad, x.layout().shape().dims::<4>())));
            }
            let channels = [normalized.gamma.len()];
            if let Some(node) = node_gamma {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(gamma_grad, channels)));
            }
            if let Some(node) = node_beta {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(grad_sums, channels)));
            }
        }
    }

    /// The passes over a `[batch, channels, height, width]` activation, plane by plane.
    mod planes {
        use rayon::prelude::*;

        use super::{FlexTensor, NormStats, Normalized};
        use crate::model::wide::wide_fn;

        pub(super) struct Planes {
            channels: usize,
            /// Values per (image, channel) plane.
            size: usize,
        }

        impl Planes {
            pub(super) fn of(x: &FlexTensor) -> Self {
                let [_, channels, height, width] = x.layout().shape().dims::<4>();
                Self { channels, size: height * width }
            }

            /// Per channel, `f(plane, values of the plane)` summed over the channel's planes, in
            /// f64 across planes.
            fn channel_sums(&self, values: &[f32], f: impl Fn(usize, &[f32]) -> f32 + Sync) -> Vec<f64> {
                (0..self.channels)
                    .into_par_iter()
                    .map(|channel| {
                        values.chunks_exact(self.size).enumerate().skip(channel).step_by(self.channels).map(|(plane, part)| f(plane, part) as f64).sum()
                    })
                    .collect()
            }

            fn channel(&self, plane: usize) -> usize {
                plane % self.channels
            }

            fn count(&self, values: &[f32]) -> f64 {
                (values.len() / self.channels) as f64
            }

            /// Per-channel mean and biased variance, the variance over the deviations from
            /// the mean (two passes, as Burn's).
            pub(super) fn moments(&self, values: &[f32]) -> (Vec<f32>, Vec<f32>) {
                let count = self.count(values);
                let mean: Vec<f32> = self.channel_sums(values, |_, part| sum(part)).into_iter().map(|sum| (sum / count) as f32).collect();
                let var = self
                    .channel_sums(values, |plane, part| squared_deviations(part, mean[self.channel(plane)]))
                    .into_iter()
                    .map(|sum| (sum / count) as f32)
                    .collect();
                (mean, var)
            }

            /// `values * scale + shift`, per channel.
            pub(super) fn affine(&self, values: &[f32], scale: &[f32], shift: &[f32]) -> Vec<f32> {
                let mut output = vec![0.0; values.len()];
                output.par_chunks_mut(self.size).zip(values.par_chunks(self.size)).enumerate().for_each(|(plane, (output, values))| {
                    affine(output, values, scale[self.channel(plane)], shift[self.channel(plane)]);
                });
                output
            }

            /// Per channel: the sum of `grad`, and of `grad` times `x` minus the channel's mean.
            pub(super) fn gradient_sums(&self, grad: &[f32], x: &[f32], mean: &[f32]) -> (Vec<f32>, Vec<f32>) {
                let grad_sums = self.channel_sums(grad, |_, part| sum(part));
                let centred = self.channel_sums(grad, |plane, part| centred_products(part, &x[plane * self.size..][..self.size], mean[self.channel(plane)]));
                let narrow = |sums: Vec<f64>| sums.into_iter().map(|sum| sum as f32).collect();
                (narrow(grad_sums), narrow(centred))
            }

            /// The input's gradient: through the output alone when the moments were given,
            /// and through the batch's moments too when they were the input's own.
            pub(super) fn input_gradient(&self, grad: &[f32], x: &[f32], normalized: &Normalized, grad_sums: &[f32], gamma_grad: &[f32]) -> Vec<f32> {
                let count = self.count(grad) as f32;
                let mut output = vec![0.0; grad.len()];
                output.par_chunks_mut(self.size).zip(grad.par_chunks(self.size).zip(x.par_chunks(self.size))).enumerate().for_each(
                    |(plane, (output, (grad, x)))| {
                        let channel = self.channel(plane);
                        let (inverse_std, mean) = (normalized.inverse_std[channel], normalized.mean[channel]);
                        let scale = normalized.gamma[channel] * inverse_std;
                        match normalized.stats {
                            NormStats::Batch => {
                                // d/dx of gamma * (x - mean) / std + beta with the batch's mean and std:
                                // scale * (grad - mean of grad - x_hat * mean of grad * x_hat).
                                let (grad_mean, gamma_grad_mean) = (grad_sums[channel] / count, gamma_grad[channel] / count);
                                batch_input_gradient(output, grad, x, scale, grad_mean, mean, inverse_std * gamma_grad_mean);
                            }
                            NormStats::Running => scaled(output, grad, scale),
                        }
                    },
                );
                output
            }
        }

        /// Lanes summed apart, so that a sum of f32 vectorises (one running sum cannot be
        /// reordered).
        const LANES: usize = 16;

        wide_fn! {
            /// The sum of `values`.
            fn sum(values: &[f32]) -> f32 {
                sum_by(values, |value| value)
            }
        }

        wide_fn! {
            /// The sum of the squared deviations of `values` from `mean`.
            fn squared_deviations(values: &[f32], mean: f32) -> f32 {
                sum_by(values, |value| (value - mean).powi(2))
            }
        }

        wide_fn! {
            /// The sum of `grad` times `x` minus `mean`.
            fn centred_products(grad: &[f32], x: &[f32], mean: f32) -> f32 {
                sum_pairs_by(grad, x, |grad, x| grad * (x - mean))
            }
        }

        wide_fn! {
            /// `output = values * scale + shift`.
            fn affine(output: &mut [f32], values: &[f32], scale: f32, shift: f32) {
                output.iter_mut().zip(values).for_each(|(output, value)| *output = value * scale + shift);
            }
        }

        wide_fn! {
            /// `output = values * scale`.
            fn scaled(output: &mut [f32], values: &[f32], scale: f32) {
                output.iter_mut().zip(values).for_each(|(output, value)| *output = value * scale);
            }
        }

        wide_fn! {
            /// `output = scale * (grad - grad_mean - (x - mean) * slope)`: the input gradient
            /// through the batch's moments.
            fn batch_input_gradient(output: &mut [f32], grad: &[f32], x: &[f32], scale: f32, grad_mean: f32, mean: f32, slope: f32) {
                for ((output, grad), x) in output.iter_mut().zip(grad).zip(x) {
                    *output = scale * (grad - grad_mean - (x - mean) * slope);
                }
            }
        }

        /// The sum of `f` over `values`.
        #[inline(always)]
        fn sum_by(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
            let chunks = values.chunks_exact(LANES);
            let rest: f32 = chunks.remainder().iter().map(|&value| f(value)).sum();
            let mut lanes = [0.0; LANES];
            for chunk in chunks {
                lanes.iter_mut().zip(chunk).for_each(|(lane, &value)| *lane += f(value));
            }
            lanes.iter().sum::<f32>() + rest
        }

        /// The sum of `f` over the pairs of `a` and `b`, of equal length.
        #[inline(always)]
        fn sum_pairs_by(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
            let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
            let rest: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(&a, &b)| f(a, b)).sum();
            let mut lanes = [0.0; LANES];
            for (a, b) in chunks_a.zip(chunks_b) {
                lanes.iter_mut().zip(a.iter().zip(b)).for_each(|(lane, (&a, &b))| *lane += f(a, b));
            }
            lanes.iter().sum::<f32>() + rest
        }
    }

    #[cfg(test)]
    mod tests {
        use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
        use burn::backend::Autodiff;
        use burn::module::{Param, RunningState};
        use burn::tensor::Distribution;

        use super::super::BatchNormConfig;
        use super::*;
        use crate::model::wide::tests::in_every_width;

        /// Three channels whose learned values and running statistics are not the initial ones.
        fn norm<B: Backend>() -> BatchNorm<B> {
            let device = Default::default();
            let mut norm = BatchNormConfig::new(3).init::<B>(&device);
            norm.weight = Param::from_tensor(Tensor::from_floats([0.5, -1.5, 2.0], &device));
            norm.bias = Param::from_tensor(Tensor::from_floats([0.1, 0.0, -0.3], &device));
            norm.running_mean = RunningState::new(Tensor::from_floats([0.2, -0.1, 1.0], &device));
            norm.running_var = RunningState::new(Tensor::from_floats([0.5, 2.0, 1.5], &device));
            norm
        }

        fn assert_close<const D: usize>(ours: Tensor<Flex, D>, burns: Tensor<Flex, D>, what: &str) {
            // `max` below might drop a NaN.
            assert!(ours.to_data().iter::<f32>().all(f32::is_finite), "{what}: not finite");
            let scale = burns.clone().abs().max().into_scalar();
            let error = (ours - burns).abs().max().into_scalar();
            assert!(error <= 1e-5 * scale, "{what}: error {error} of {scale}");
        }

        type Forward<B> = fn(&BatchNorm<B>, Tensor<B, 4>, NormStats) -> Tensor<B, 4>;

        fn ours<B: Backend>(norm: &BatchNorm<B>, x: Tensor<B, 4>, stats: NormStats) -> Tensor<B, 4> {
            forward(norm, x, stats).expect("on Flex")
        }

        fn burns<B: Backend>(norm: &BatchNorm<B>, x: Tensor<B, 4>, stats: NormStats) -> Tensor<B, 4> {
            norm.forward_with_tensor_ops(x, stats)
        }

        #[test]
        fn training_outputs_gradients_and_running_statistics_equal_burns() {
            let device = Default::default();
            // A mean far from zero, as after a convolution, and odd sizes.
            let x = Tensor::<Training, 4>::random([4, 3, 5, 29], Distribution::Normal(3.0, 2.0), &device);
            let upstream = Tensor::<Training, 4>::random([4, 3, 5, 29], Distribution::Normal(0.0, 1.0), &device);
            // Every form of the passes' loops, on planes of 145 values: long enough for their
            // vector bodies, and nine chunks of 16 lanes and one more.
            in_every_width(|vectors| {
                for stats in [NormStats::Batch, NormStats::Running] {
                    let run = |forward: Forward<Training>| {
                        let (norm, x) = (norm::<Training>(), x.clone().require_grad());
                        let output = forward(&norm, x.clone(), stats);
                        let grads = (output.clone() * upstream.clone()).sum().backward();
                        let [gamma, beta] = [&norm.weight, &norm.bias].map(|param| param.val().grad(&grads).expect("a parameter's gradient"));
                        let running = [norm.running_mean.value_sync(), norm.running_var.value_sync()].map(|t| t.inner());
                        (output.inner(), x.grad(&grads).expect("the input's gradient"), [gamma, beta], running)
                    };
                    let (output, input_grad, params, running) = run(ours);
                    let (burns_output, burns_input_grad, burns_params, burns_running) = run(burns);
                    assert_close(output, burns_output, &format!("{stats:?}, {vectors}: output"));
                    assert_close(input_grad, burns_input_grad, &format!("{stats:?}, {vectors}: input gradient"));
                    for ((ours, burns), what) in params.into_iter().zip(burns_params).zip(["gamma", "beta"]) {
                        assert_close(ours, burns, &format!("{stats:?}, {vectors}: {what}'s gradient"));
                    }
                    for ((ours, burns), what) in running.into_iter().zip(burns_running).zip(["mean", "variance"]) {
                        assert_close(ours, burns, &format!("{stats:?}, {vectors}: running {what}"));
                    }
                }
            });
        }

        #[test]
        fn parameters_alone_get_gradients_as_burns() {
            // The importance pass: every parameter tracked, the images not.
            let device = Default::default();
            let x = Tensor::<Training, 4>::random([2, 3, 4, 4], Distribution::Normal(-1.0, 0.5), &device);
            let upstream = Tensor::<Training, 4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
            for stats in [NormStats::Running, NormStats::Batch] {
                let param_grads = |forward: Forward<Training>| {
                    let norm = norm::<Training>();
                    let grads = (forward(&norm, x.clone(), stats) * upstream.clone()).sum().backward();
                    [&norm.weight, &norm.bias].map(|param| param.val().grad(&grads).expect("a parameter's gradient"))
                };
                for ((ours, burns), what) in param_grads(ours).into_iter().zip(param_grads(burns)).zip(["gamma", "beta"]) {
                    assert_close(ours, burns, &format!("{stats:?}: {what}'s gradient, untracked input"));
                }
            }
        }

        #[test]
        fn channel_counts_that_do_not_match_are_left_to_burn() {
            let x = Tensor::<Flex, 4>::zeros([1, 4, 2, 2], &Default::default());
            assert!(forward(&norm::<Flex>(), x, NormStats::Running).is_err(), "three channels' values for four channels");
        }

        #[test]
        fn inference_outputs_and_running_statistics_equal_burns() {
            let x = Tensor::<Flex, 4>::random([3, 3, 6, 5], Distribution::Normal(2.0, 3.0), &Default::default());
            for stats in [NormStats::Running, NormStats::Batch] {
                let run = |forward: Forward<Flex>| {
                    let norm = norm::<Flex>();
                    (forward(&norm, x.clone(), stats), norm.running_mean.value_sync(), norm.running_var.value_sync())
                };
                let ((output, mean, var), (burns_output, burns_mean, burns_var)) = (run(ours), run(burns));
                assert_close(output, burns_output, &format!("{stats:?}: output"));
                assert_close(mean, burns_mean, &format!("{stats:?}: running mean"));
                assert_close(var, burns_var, &format!("{stats:?}: running variance"));
            }
        }

        #[test]
        fn other_backends_are_left_to_burn() {
            let x = Tensor::<Autodiff<Flex, BalancedCheckpointing>, 4>::zeros([1, 3, 2, 2], &Default::default());
            assert!(forward(&norm(), x, NormStats::Batch).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    /// PyTorch's rule, whichever path normalises: running = 0.9 running + 0.1 batch, with the
    /// batch's unbiased variance.
    #[test]
    fn running_statistics_follow_pytorch() {
        type Forward = fn(&BatchNorm<Flex>, Tensor<Flex, 4>, NormStats) -> Tensor<Flex, 4>;
        let device = Default::default();
        // One channel of 1, 2, 3, 6: mean 3, squared deviations summing to 14.
        let x = Tensor::<Flex, 4>::from_floats([[[[1.0, 2.0], [3.0, 6.0]]]], &device);
        for forward in [BatchNorm::forward as Forward, BatchNorm::forward_with_tensor_ops] {
            let norm = BatchNormConfig::new(1).init::<Flex>(&device);
            forward(&norm, x.clone(), NormStats::Batch);
            let [mean, var] = [norm.running_mean.value_sync(), norm.running_var.value_sync()].map(|t| t.into_scalar());
            assert!((mean - 0.3).abs() < 1e-6, "{mean}");
            assert!((var - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6, "{var}");
        }
    }
}
