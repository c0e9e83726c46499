//! What one pass over a set of images measured, and the report forms made from it.

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
}

impl Default for Evaluation {
    fn default() -> Self {
        Self {
            confusion: vec![vec![0; NUM_CLASSES]; NUM_CLASSES],
            loss_sum: vec![0.0; NUM_CLASSES],
            entropy: vec![Vec::new(); NUM_CLASSES],
            recognised: vec![Vec::new(); NUM_CLASSES],
        }
    }
}

impl Evaluation {
    /// One image: its index in its split, its true and predicted class, its NLL and entropy.
    pub(crate) fn record(&mut self, index: usize, label: usize, predicted: usize, loss: f64, entropy: f64) {
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
        eval.record(10, 0, 0, 0.5, 0.1);
        eval.record(11, 0, 1, 1.5, 0.2);
        eval.record(12, 1, 1, 0.25, 0.3);
        eval.record(13, 2, 2, 0.75, 0.4);
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
            eval.record(index, 3, predicted, 0.1, 0.1);
        }
        eval.record(8, 5, 3, 0.1, 0.1);
        assert_eq!(eval.recognised(3, 10), vec![7, 12, 40]);
        assert_eq!(eval.recognised(3, 10).len() as u64, eval.confusion[3][3]);
        assert_eq!(eval.recognised(3, 2), vec![7, 12], "the smallest indices up to the cap");
        assert_eq!(eval.recognised(5, 10), Vec::<usize>::new(), "another class taken for it does not count");
    }
}
