//! The linear probe: a softmax classifier fitted afresh on a model's penultimate features,
//! which tells whether the features still carry a class whatever the model's own `fc` says.
//! The protocol: features standardised by the training images' mean and spread, weights
//! from zero, [`PROBE_STEPS`] full-batch Adam steps on the mean NLL with L2 decay.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use unlearn_shared::cifar::NUM_CLASSES;

use super::evaluation::{Evaluation, Outputs};
use super::progress::{Cancelled, PhaseTimer, Progress};

/// Full-batch optimiser steps of one fit.
pub(crate) const PROBE_STEPS: usize = 300;
const LEARNING_RATE: f32 = 0.01;
const WEIGHT_DECAY: f32 = 1e-3;
const BETAS: (f32, f32) = (0.9, 0.999);
const EPSILON: f32 = 1e-8;
/// Steps between progress events.
const REPORT_EVERY: usize = 20;

/// Work of one step per training image, in forward-pass images: a 300-step fit on 10,000
/// images took 3.2 s on the 2-core machine, the time of about 120 ResNet18 forward passes of
/// an image there (about 40 a second).
pub(crate) const STEP_COST_PER_IMAGE: f64 = 4e-5;

/// Standardised features: each column centred and scaled by the training images' figures.
struct Standardise<B: Backend> {
    mean: Tensor<B, 2>,
    scale: Tensor<B, 2>,
}

impl<B: Backend> Standardise<B> {
    fn fit(x: &Tensor<B, 2>) -> Self {
        let mean = x.clone().mean_dim(0);
        let spread = (x.clone() - mean.clone()).powi_scalar(2).mean_dim(0).sqrt();
        // A feature that never varies is left at zero rather than divided by zero.
        Self { mean, scale: spread.clamp_min(1e-6).recip() }
    }

    fn apply(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        (x - self.mean.clone()) * self.scale.clone()
    }
}

/// Fits a probe on `train`'s features and labels and returns what it makes of `test`'s
/// images, reporting progress as `phase` in steps.
pub(crate) fn linear_probe<B: Backend>(
    train: &Outputs,
    test: &Outputs,
    phase: &str,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Evaluation, Cancelled> {
    let width = train.width();
    assert!(width > 0 && test.width() == width, "both sets carry features of the same width");
    let x = train.features_tensor::<B>(device);
    let standardise = Standardise::fit(&x);
    let x = standardise.apply(x);
    let xt = x.clone().transpose();
    let labels: Vec<i64> = train.labels.iter().map(|&label| label as i64).collect();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [train.len()]), device);
    let targets = labels.one_hot::<2>(NUM_CLASSES).float();
    let images = train.len() as f32;

    let mut weight = Tensor::<B, 2>::zeros([width, NUM_CLASSES], device);
    let mut bias = Tensor::<B, 2>::zeros([1, NUM_CLASSES], device);
    let mut moments = [weight.clone(), weight.clone(), bias.clone(), bias.clone()];
    let timer = PhaseTimer::start(phase, PROBE_STEPS as u64, progress);
    for step in 1..=PROBE_STEPS {
        if progress.cancelled() {
            return Err(Cancelled);
        }
        let residual = (softmax(x.clone().matmul(weight.clone()) + bias.clone(), 1) - targets.clone()) / images;
        let weight_grad = xt.clone().matmul(residual.clone()) + weight.clone() * WEIGHT_DECAY;
        let bias_grad = residual.sum_dim(0);
        let [wm, wv, bm, bv] = moments;
        let (weight_step, wm, wv) = adam(weight_grad, wm, wv, step);
        let (bias_step, bm, bv) = adam(bias_grad, bm, bv, step);
        weight = weight - weight_step;
        bias = bias - bias_step;
        moments = [wm, wv, bm, bv];
        if step % REPORT_EVERY == 0 || step == PROBE_STEPS {
            progress.report(&timer.event(step as u64));
        }
    }

    let logits = standardise.apply(test.features_tensor::<B>(device)).matmul(weight) + bias;
    Ok(Evaluation::of_logits(test, &logits.into_data().convert::<f32>().to_vec::<f32>().expect("float data")))
}

/// One Adam step: the update to subtract, and the new first and second moments.
fn adam<B: Backend>(grad: Tensor<B, 2>, first: Tensor<B, 2>, second: Tensor<B, 2>, step: usize) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let (beta1, beta2) = BETAS;
    let first = first * beta1 + grad.clone() * (1.0 - beta1);
    let second = second * beta2 + grad.powi_scalar(2) * (1.0 - beta2);
    let corrected_first = first.clone() / (1.0 - beta1.powi(step as i32));
    let corrected_second = second.clone() / (1.0 - beta2.powi(step as i32));
    let update = corrected_first / (corrected_second.sqrt() + EPSILON) * LEARNING_RATE;
    (update, first, second)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::engine::device::CpuBackend;
    use crate::engine::progress::Silent;

    /// `per_class` images of each class with `width` features from `feature(class, rng)`.
    fn outputs(per_class: usize, width: usize, seed: u64, feature: impl Fn(usize, &mut rand_chacha::ChaCha8Rng) -> Vec<f32>) -> Outputs {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut evaluation = Evaluation::default();
        for index in 0..per_class * NUM_CLASSES {
            let class = index % NUM_CLASSES;
            let features = feature(class, &mut rng);
            assert_eq!(features.len(), width);
            evaluation.record(index, class, &[0.0; NUM_CLASSES], &features);
        }
        evaluation.outputs
    }

    fn noise(rng: &mut rand_chacha::ChaCha8Rng, width: usize) -> Vec<f32> {
        (0..width).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn probe(train: &Outputs, test: &Outputs) -> Evaluation {
        linear_probe::<CpuBackend>(train, test, "probe", &Default::default(), &mut Silent).unwrap()
    }

    #[test]
    fn features_that_carry_no_class_give_a_chance_level_probe() {
        let width = 32;
        let train = outputs(100, width, 1, |_, rng| noise(rng, width));
        let test = outputs(100, width, 2, |_, rng| noise(rng, width));
        let accuracy = probe(&train, &test).overall().accuracy;
        println!("probe on class-free features: {accuracy:.1} %");
        // Chance is 10 %; 1,000 test images put 95 % of chance outcomes within about ±2 points.
        assert!((5.0..=15.0).contains(&accuracy), "{accuracy}");
    }

    #[test]
    fn features_that_carry_the_class_give_it_back() {
        let width = 32;
        // Each class shifts its own feature; the rest is noise.
        let carries = |class: usize, rng: &mut rand_chacha::ChaCha8Rng| {
            let mut features = noise(rng, width);
            features[class] += 3.0;
            features
        };
        let train = outputs(100, width, 1, carries);
        let test = outputs(100, width, 2, carries);
        let evaluation = probe(&train, &test);
        println!("probe on features that carry the class: {:.1} %", evaluation.overall().accuracy);
        assert!(evaluation.overall().accuracy >= 95.0, "{:?}", evaluation.per_class_accuracy());

        // Class 3 made to look like class 4: the probe cannot tell them apart any more.
        let hidden = |class: usize, rng: &mut rand_chacha::ChaCha8Rng| carries(if class == 3 { 4 } else { class }, rng);
        let (train, test) = (outputs(100, width, 1, hidden), outputs(100, width, 2, hidden));
        let split = probe(&train, &test).forget_retain(3);
        println!("class 3 without features of its own: {:.1} %, the rest {:.1} %", split.forget.accuracy, split.retain.accuracy);
        assert!(split.forget.accuracy <= 75.0 && split.retain.accuracy >= 85.0, "{split:?}");
    }
}
