//! The relearning attack: fine-tune a copy of a model's output layer on its own penultimate
//! features and watch how fast the forget class comes back. Knowledge that is only hidden at
//! the output (a dampened row of `fc`) returns in a handful of steps, because the features
//! still separate the class; features that no longer carry it give it back slowly, and only
//! at the cost of the classes it is confused with.
//!
//! The protocol: the model's own `fc` as the start; plain SGD with momentum on the mean NLL;
//! each batch draws [`FORGET_PER_BATCH`] forget-class images and the rest from the retain
//! classes of the training subset, with replacement, from a fixed seed. Fine-tuning on the
//! forget class alone would make any model call everything that class, so retain images are
//! mixed in and the learning rate is small. The test set is classified after each of
//! [`CHECKPOINTS`] steps.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use rand::{Rng, SeedableRng};
use unlearn_shared::cifar::NUM_CLASSES;

use super::evaluation::{Evaluation, Outputs};
use super::probe::STEP_COST_PER_IMAGE;
use super::progress::{Cancelled, PhaseTimer, Progress, Step};

/// Fine-tuning steps in all.
pub(crate) const STEPS: usize = 50;
/// Steps after which the test set is classified.
pub(crate) const CHECKPOINTS: [usize; 6] = [0, 1, 5, 10, 25, STEPS];
/// Images per fine-tuning step.
pub(crate) const BATCH: usize = 128;
/// Forget-class images in each batch: a quarter, where the training set holds a tenth.
pub(crate) const FORGET_PER_BATCH: usize = 32;
pub(crate) const LEARNING_RATE: f64 = 0.01;
pub(crate) const MOMENTUM: f64 = 0.9;
const SEED: u64 = 0;

/// The phase of one fine-tune, counted in steps. Its work, in forward-pass images, priced as
/// the linear probe's: a step is two small products over the batch, a checkpoint one over
/// the test set.
pub(crate) fn plan(phase: String, test_images: usize) -> Step {
    let work = (STEPS * BATCH) as f64 * STEP_COST_PER_IMAGE + (CHECKPOINTS.len() * test_images) as f64 * STEP_COST_PER_IMAGE / 2.0;
    Step::new(phase, STEPS, work / STEPS as f64)
}

/// The output layer `fc`, fine-tuned on `train`'s features and labels: what it makes of
/// `test`'s images after each of [`CHECKPOINTS`] steps. Empty where the training images hold
/// no image of `class`, or none of another class. Reports progress as `phase`, in steps.
pub(crate) fn fine_tune<B: Backend>(
    fc: &Linear<B>,
    train: &Outputs,
    test: &Outputs,
    class: usize,
    phase: &str,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Vec<(usize, Evaluation)>, Cancelled> {
    let (forget, retain): (Vec<usize>, Vec<usize>) = (0..train.len()).partition(|&row| train.labels[row] == class);
    if forget.is_empty() || retain.is_empty() {
        return Ok(Vec::new());
    }
    let width = train.width();
    assert!(width > 0 && test.width() == width, "both sets carry features of the same width");
    let x = train.features_tensor::<B>(device);
    let labels: Vec<i64> = train.labels.iter().map(|&label| label as i64).collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [train.len()]), device).one_hot::<2>(NUM_CLASSES).float();
    let test_x = test.features_tensor::<B>(device);

    let mut weight = fc.weight.val();
    let mut bias = fc.bias.as_ref().map_or_else(|| Tensor::zeros([1, NUM_CLASSES], device), |bias| bias.val().unsqueeze::<2>());
    let mut velocity = [weight.zeros_like(), bias.zeros_like()];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
    let (learning_rate, momentum) = (LEARNING_RATE as f32, MOMENTUM as f32);
    let timer = PhaseTimer::start(phase, STEPS as u64, progress);
    let mut measured = Vec::new();
    for step in 0..=STEPS {
        if CHECKPOINTS.contains(&step) {
            let logits = test_x.clone().matmul(weight.clone()) + bias.clone();
            measured.push((step, Evaluation::of_logits(test, &logits.into_data().convert::<f32>().to_vec::<f32>().expect("float data"))));
            progress.report(&timer.event(step as u64));
        }
        if step == STEPS {
            break;
        }
        if progress.cancelled() {
            return Err(Cancelled);
        }
        let draw =
            |rows: &[usize], n: usize, rng: &mut rand_chacha::ChaCha8Rng| (0..n).map(|_| rows[rng.random_range(0..rows.len())] as i64).collect::<Vec<_>>();
        let rows = [draw(&forget, FORGET_PER_BATCH, &mut rng), draw(&retain, BATCH - FORGET_PER_BATCH, &mut rng)].concat();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [BATCH]), device);
        let batch = x.clone().select(0, rows.clone());
        let residual = (softmax(batch.clone().matmul(weight.clone()) + bias.clone(), 1) - targets.clone().select(0, rows)) / BATCH as f32;
        let [weight_velocity, bias_velocity] = velocity;
        // PyTorch's SGD with momentum and no dampening.
        let weight_velocity = weight_velocity * momentum + batch.transpose().matmul(residual.clone());
        let bias_velocity = bias_velocity * momentum + residual.sum_dim(0);
        weight = weight - weight_velocity.clone() * learning_rate;
        bias = bias - bias_velocity.clone() * learning_rate;
        velocity = [weight_velocity, bias_velocity];
    }
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::LinearConfig;
    use rand::Rng;

    use super::*;
    use crate::engine::device::CpuBackend;
    use crate::engine::progress::Silent;

    const WIDTH: usize = 32;
    const SHIFT: f32 = 3.0;

    /// `per_class` images of each class whose features are noise but for a shift of the
    /// feature numbered by `carried(class)`.
    fn outputs(per_class: usize, seed: u64, carried: impl Fn(usize) -> usize) -> Outputs {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut evaluation = Evaluation::default();
        for index in 0..per_class * NUM_CLASSES {
            let class = index % NUM_CLASSES;
            let mut features: Vec<f32> = (0..WIDTH).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            features[carried(class)] += SHIFT;
            evaluation.record(index, class, &[0.0; NUM_CLASSES], &features);
        }
        evaluation.outputs
    }

    /// An output layer that reads class `c` from feature `c`, but for `hidden`, whose row is
    /// zero: it is never the largest logit of an image that carries another class.
    fn fc(hidden: usize) -> Linear<CpuBackend> {
        let device = Default::default();
        let mut weight = vec![0.0f32; WIDTH * NUM_CLASSES];
        for class in (0..NUM_CLASSES).filter(|&c| c != hidden) {
            weight[class * NUM_CLASSES + class] = SHIFT;
        }
        let mut fc = LinearConfig::new(WIDTH, NUM_CLASSES).init::<CpuBackend>(&device);
        fc.weight = Param::from_tensor(Tensor::from_data(TensorData::new(weight, [WIDTH, NUM_CLASSES]), &device));
        fc.bias = Some(Param::from_tensor(Tensor::zeros([NUM_CLASSES], &device)));
        fc
    }

    fn run(fc: &Linear<CpuBackend>, train: &Outputs, test: &Outputs) -> Vec<(usize, Evaluation)> {
        fine_tune(fc, train, test, 3, "relearn", &Default::default(), &mut Silent).unwrap()
    }

    #[test]
    fn a_class_hidden_at_the_output_comes_back_in_a_few_steps() {
        let own = |class| class;
        let (train, test) = (outputs(100, 1, own), outputs(100, 2, own));
        let measured = run(&fc(3), &train, &test);
        assert_eq!(measured.iter().map(|(steps, _)| *steps).collect::<Vec<_>>(), CHECKPOINTS);
        let accuracy = |at: usize| measured[at].1.per_class_accuracy();
        println!("hidden class 3 while relearning: {:?}", measured.iter().map(|(s, e)| (s, e.class(3).accuracy)).collect::<Vec<_>>());
        assert!(accuracy(0)[3] <= 5.0, "hidden at the start: {:?}", accuracy(0));
        let last = accuracy(CHECKPOINTS.len() - 1);
        assert!(last[3] >= 90.0, "back after {STEPS} steps: {last:?}");
        assert!(last.iter().all(|&a| a >= 85.0), "without costing the others: {last:?}");
    }

    #[test]
    fn a_class_the_features_no_longer_carry_comes_back_only_at_anothers_cost() {
        // Class 3's images look like class 4's.
        let merged = |class| if class == 3 { 4 } else { class };
        let (train, test) = (outputs(100, 1, merged), outputs(100, 2, merged));
        let measured = run(&fc(3), &train, &test);
        for (steps, evaluation) in &measured {
            let accuracy = evaluation.per_class_accuracy();
            // Images that cannot be told apart are split between the two classes at best.
            assert!(accuracy[3] + accuracy[4] <= 110.0, "{steps} steps: {accuracy:?}");
        }
        // The fine-tune does pull class 3 back, by calling class 4's images class 3 too.
        let (start, end) = (measured[0].1.per_class_accuracy(), measured[CHECKPOINTS.len() - 1].1.per_class_accuracy());
        assert!(end[3] >= start[3] + 50.0 && end[4] <= start[4] - 50.0, "from {start:?} to {end:?}");
    }

    #[test]
    fn no_forget_class_image_means_no_relearning() {
        let train = outputs(10, 1, |class| class);
        let mut without = Evaluation::default();
        for row in (0..train.len()).filter(|&row| train.labels[row] != 3) {
            without.record(row, train.labels[row], &[0.0; NUM_CLASSES], &train.features[row * WIDTH..(row + 1) * WIDTH]);
        }
        assert!(run(&fc(3), &without.outputs, &train).is_empty());
    }
}
