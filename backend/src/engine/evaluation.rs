//! What one pass over a set of images measured, and the report forms made from it.

use burn::prelude::{Backend, Tensor, TensorData};
use unlearn_shared::api::{AccLoss, EvalReport, ForgetRetain, ModelReport};
use unlearn_shared::cifar::NUM_CLASSES;

/// Everything measured on one evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Evaluation {
    /// `confusion[true][predicted]` image counts.
    pub(crate) confusion: Vec<Vec<u64>>,
    /// Summed NLL per true class.
    pub(crate) loss_sum: Vec<f64>,
    /// Softmax entropy of every image, grouped by true class: the membership attack's feature.
    pub(crate) entropy: Vec<Vec<f64>>,
    /// Indices (into their split) of the images classified as their class, by class.
    recognised: Vec<Vec<usize>>,
    /// What the model gave for each image, in the order recorded: what the logit mask and
    /// the linear probe read.
    pub(crate) outputs: Outputs,
}

/// Each image's split index, label, logits and penultimate features, in rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Outputs {
    pub(crate) indices: Vec<usize>,
    pub(crate) labels: Vec<usize>,
    /// `[images, NUM_CLASSES]`, row-major.
    logits: Vec<f32>,
    /// `[images, width]`, row-major; empty where no features were recorded.
    pub(crate) features: Vec<f32>,
}

impl Outputs {
    pub(crate) fn len(&self) -> usize {
        self.labels.len()
    }

    /// Features per image.
    pub(crate) fn width(&self) -> usize {
        self.features.len().checked_div(self.len()).unwrap_or(0)
    }

    /// `[images, width]` of the features, on `device`.
    pub(crate) fn features_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(self.features.clone(), [self.len(), self.width()]), device)
    }
}

impl Default for Evaluation {
    fn default() -> Self {
        Self {
            confusion: vec![vec![0; NUM_CLASSES]; NUM_CLASSES],
            loss_sum: vec![0.0; NUM_CLASSES],
            entropy: vec![Vec::new(); NUM_CLASSES],
            recognised: vec![Vec::new(); NUM_CLASSES],
            outputs: Outputs::default(),
        }
    }
}

/// Log-softmax of `logits` in f64; a logit of minus infinity gets a log-probability of minus
/// infinity and takes no share.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_sum = max + sum.ln();
    logits.iter().map(|&l| l as f64 - log_sum).collect()
}

impl Evaluation {
    /// One image: its index in its split, its label, the model's logits and its penultimate
    /// features (empty where they are not kept).
    pub(crate) fn record(&mut self, index: usize, label: usize, logits: &[f32], features: &[f32]) {
        assert_eq!(logits.len(), NUM_CLASSES, "one logit per class");
        let log_probs = log_softmax(logits);
        // The first of equal logits, as argmax picks.
        let predicted = (0..NUM_CLASSES).fold(0, |best, class| if log_probs[class] > log_probs[best] { class } else { best });
        let entropy = -log_probs.iter().filter(|p| p.is_finite()).map(|&p| p.exp() * p).sum::<f64>();
        self.tally(index, label, predicted, -log_probs[label], entropy);
        self.outputs.indices.push(index);
        self.outputs.labels.push(label);
        self.outputs.logits.extend_from_slice(logits);
        self.outputs.features.extend_from_slice(features);
    }

    /// `outputs`' images as other logits (`[images, NUM_CLASSES]`, row-major) classify them;
    /// no features are kept.
    pub(crate) fn of_logits(outputs: &Outputs, logits: &[f32]) -> Self {
        assert_eq!(logits.len(), outputs.len() * NUM_CLASSES, "one row of logits per image");
        let mut evaluation = Self::default();
        for ((&index, &label), logits) in outputs.indices.iter().zip(&outputs.labels).zip(logits.chunks(NUM_CLASSES)) {
            evaluation.record(index, label, logits, &[]);
        }
        evaluation
    }

    /// The same images as a model that never predicts `class` sees them: the forget class's
    /// logit set to minus infinity, everything else as it was. No features are kept: the
    /// mask's are the model's own.
    pub(crate) fn masked(&self, class: usize) -> Self {
        let mut logits = self.outputs.logits.clone();
        for row in logits.chunks_mut(NUM_CLASSES) {
            row[class] = f32::NEG_INFINITY;
        }
        Self::of_logits(&self.outputs, &logits)
    }

    /// One image's verdict: its true and predicted class, its NLL and entropy.
    fn tally(&mut self, index: usize, label: usize, predicted: usize, loss: f64, entropy: f64) {
        self.confusion[label][predicted] += 1;
        self.loss_sum[label] += loss;
        self.entropy[label].push(entropy);
        if predicted == label {
            self.recognised[label].push(index);
        }
    }

    /// The smallest `at_most` split indices of images of `class` classified as `class`,
    /// ascending.
    pub(crate) fn recognised(&self, class: usize, at_most: usize) -> Vec<usize> {
        let mut indices = self.recognised[class].clone();
        indices.sort_unstable();
        indices.truncate(at_most);
        indices
    }

    /// Entropies of the images whose true class `classes` selects.
    pub(crate) fn entropies(&self, classes: impl Fn(usize) -> bool) -> Vec<f64> {
        self.entropy.iter().enumerate().filter(|(class, _)| classes(*class)).flat_map(|(_, e)| e.iter().copied()).collect()
    }

    /// Over the true classes `classes` select.
    fn acc_loss(&self, classes: impl Fn(usize) -> bool) -> AccLoss {
        let (mut correct, mut images, mut loss) = (0u64, 0u64, 0.0);
        for (class, row) in self.confusion.iter().enumerate().filter(|(class, _)| classes(*class)) {
            correct += row[class];
            images += row.iter().sum::<u64>();
            loss += self.loss_sum[class];
        }
        let per_image = |x: f64| if images == 0 { f64::NAN } else { x / images as f64 };
        AccLoss { accuracy: 100.0 * per_image(correct as f64), loss: per_image(loss), images }
    }

    pub(crate) fn overall(&self) -> AccLoss {
        self.acc_loss(|_| true)
    }

    pub(crate) fn class(&self, class: usize) -> AccLoss {
        self.acc_loss(|c| c == class)
    }

    pub(crate) fn per_class_accuracy(&self) -> Vec<f64> {
        (0..self.confusion.len()).map(|c| self.class(c).accuracy).collect()
    }

    pub(crate) fn forget_retain(&self, forget_class: usize) -> ForgetRetain {
        ForgetRetain { forget: self.class(forget_class), retain: self.acc_loss(|c| c != forget_class) }
    }
}

impl Evaluation {
    /// The report's form, with `forget_class` split from the others.
    pub(crate) fn report(&self, forget_class: usize) -> EvalReport {
        EvalReport {
            overall: self.overall(),
            split: self.forget_retain(forget_class),
            per_class_accuracy: self.per_class_accuracy(),
            confusion: self.confusion.clone(),
        }
    }
}

/// One model on the test set and on a training subset, as a report shows it.
pub(crate) fn model_report(test: &Evaluation, train: &Evaluation, forget_class: usize) -> ModelReport {
    ModelReport { test: test.report(forget_class), train: train.report(forget_class) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_accuracy_and_loss_by_class() {
        let mut eval = Evaluation::default();
        eval.tally(10, 0, 0, 0.5, 0.1);
        eval.tally(11, 0, 1, 1.5, 0.2);
        eval.tally(12, 1, 1, 0.25, 0.3);
        eval.tally(13, 2, 2, 0.75, 0.4);
        let split = eval.forget_retain(0);
        assert_eq!(split.forget, AccLoss { accuracy: 50.0, loss: 1.0, images: 2 });
        assert_eq!(split.retain, AccLoss { accuracy: 100.0, loss: 0.5, images: 2 });
        assert_eq!(eval.overall().accuracy, 75.0);
        assert_eq!(eval.confusion[0][1], 1);
        assert!(eval.class(3).accuracy.is_nan(), "a class without images has no accuracy");
        assert_eq!(eval.entropies(|c| c != 0), vec![0.3, 0.4]);
    }

    #[test]
    fn recognised_images_are_listed_by_split_index_ascending_up_to_a_cap() {
        let mut eval = Evaluation::default();
        // Class 3: images 40, 7 and 12 are recognised, 9 is taken for a 5.
        for (index, predicted) in [(40, 3), (9, 5), (7, 3), (12, 3)] {
            eval.tally(index, 3, predicted, 0.1, 0.1);
        }
        eval.tally(8, 5, 3, 0.1, 0.1);
        assert_eq!(eval.recognised(3, 10), vec![7, 12, 40]);
        assert_eq!(eval.recognised(3, 10).len() as u64, eval.confusion[3][3]);
        assert_eq!(eval.recognised(3, 2), vec![7, 12], "the smallest indices up to the cap");
        assert_eq!(eval.recognised(5, 10), Vec::<usize>::new(), "another class taken for it does not count");
    }

    /// Logits with one class far ahead, and the rest level.
    fn sure_of(class: usize, margin: f32) -> Vec<f32> {
        let mut logits = vec![0.0; NUM_CLASSES];
        logits[class] = margin;
        logits
    }

    #[test]
    fn recording_logits_gives_the_softmax_verdict() {
        let mut eval = Evaluation::default();
        eval.record(0, 2, &sure_of(2, 3.0), &[1.0, 2.0]);
        eval.record(1, 4, &[0.0; NUM_CLASSES], &[3.0, 4.0]);
        // Class 2's probability: e^3 / (e^3 + 9).
        let p = 3f64.exp() / (3f64.exp() + 9.0);
        assert!((eval.loss_sum[2] + p.ln()).abs() < 1e-9, "{:?}", eval.loss_sum);
        assert!((eval.loss_sum[4] - 10f64.ln()).abs() < 1e-9 && (eval.entropy[4][0] - 10f64.ln()).abs() < 1e-9, "uniform: ln 10");
        assert_eq!((eval.confusion[2][2], eval.confusion[4][0]), (1, 1), "a tie goes to the first class");
        assert_eq!((eval.outputs.width(), &eval.outputs.features[..]), (2, &[1.0, 2.0, 3.0, 4.0][..]));
    }

    #[test]
    fn the_logit_mask_gives_every_image_its_second_choice() {
        let mut eval = Evaluation::default();
        let mut runner_up = sure_of(3, 5.0);
        runner_up[6] = 4.0;
        eval.record(10, 3, &runner_up, &[]);
        eval.record(11, 6, &runner_up, &[]);
        eval.record(12, 1, &sure_of(1, 2.0), &[]);
        let masked = eval.masked(3);
        assert_eq!(masked.confusion[3][6], 1, "the forget class's image goes to its second choice");
        assert_eq!(masked.confusion[6][6], 1, "an image wrongly called the class is now right");
        assert_eq!(masked.confusion[1][1], 1, "the rest is as it was");
        let split = masked.forget_retain(3);
        assert_eq!((split.forget.accuracy, split.forget.loss), (0.0, f64::INFINITY), "the class cannot be predicted");
        assert_eq!(split.retain.accuracy, 100.0);
        assert!(masked.entropies(|_| true).iter().all(|e| e.is_finite() && *e >= 0.0), "no share for the masked class");
        assert_eq!((masked.outputs.len(), masked.outputs.features.len()), (3, 0), "every image, and no features");
        let unmasked = eval.forget_retain(3);
        assert_eq!((unmasked.forget.accuracy, unmasked.retain.accuracy), (100.0, 50.0));
    }
}
