//! Classification metrics computed from (label, prediction, loss) triples, shared by the
//! server's evaluations and the browser's displays.

use serde::{Deserialize, Serialize};

use crate::cifar::NUM_CLASSES;

/// Accuracy (percent) and mean NLL over a set of images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AccLoss {
    pub accuracy: f64,
    pub loss: f64,
    pub images: u64,
}

/// The seed card's split: the forgotten class against all others.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ForgetRetain {
    pub forget: AccLoss,
    pub retain: AccLoss,
}

/// Everything measured on one evaluation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Evaluation {
    /// `confusion[true][predicted]` image counts.
    pub confusion: Vec<Vec<u64>>,
    /// Summed NLL per true class.
    pub loss_sum: Vec<f64>,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self { confusion: vec![vec![0; NUM_CLASSES]; NUM_CLASSES], loss_sum: vec![0.0; NUM_CLASSES] }
    }
}

impl Evaluation {
    pub fn record(&mut self, label: usize, predicted: usize, loss: f64) {
        self.confusion[label][predicted] += 1;
        self.loss_sum[label] += loss;
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

    pub fn overall(&self) -> AccLoss {
        self.acc_loss(|_| true)
    }

    pub fn class(&self, class: usize) -> AccLoss {
        self.acc_loss(|c| c == class)
    }

    pub fn per_class_accuracy(&self) -> Vec<f64> {
        (0..self.confusion.len()).map(|c| self.class(c).accuracy).collect()
    }

    pub fn forget_retain(&self, forget_class: usize) -> ForgetRetain {
        ForgetRetain { forget: self.class(forget_class), retain: self.acc_loss(|c| c != forget_class) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_accuracy_and_loss_by_class() {
        let mut eval = Evaluation::default();
        eval.record(0, 0, 0.5);
        eval.record(0, 1, 1.5);
        eval.record(1, 1, 0.25);
        eval.record(2, 2, 0.75);
        let split = eval.forget_retain(0);
        assert_eq!(split.forget, AccLoss { accuracy: 50.0, loss: 1.0, images: 2 });
        assert_eq!(split.retain, AccLoss { accuracy: 100.0, loss: 0.5, images: 2 });
        assert_eq!(eval.overall().accuracy, 75.0);
        assert_eq!(eval.confusion[0][1], 1);
        assert!(eval.class(3).accuracy.is_nan(), "a class without images has no accuracy");
    }
}
