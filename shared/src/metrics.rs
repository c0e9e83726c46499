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
    /// Softmax entropy of every image, grouped by true class: the membership attack's feature.
    #[serde(skip)]
    pub entropy: Vec<Vec<f64>>,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self {
            confusion: vec![vec![0; NUM_CLASSES]; NUM_CLASSES],
            loss_sum: vec![0.0; NUM_CLASSES],
            entropy: vec![Vec::new(); NUM_CLASSES],
        }
    }
}

impl Evaluation {
    pub fn record(&mut self, label: usize, predicted: usize, loss: f64, entropy: f64) {
        self.confusion[label][predicted] += 1;
        self.loss_sum[label] += loss;
        self.entropy[label].push(entropy);
    }

    /// Entropies of the images whose true class `classes` selects.
    pub fn entropies(&self, classes: impl Fn(usize) -> bool) -> Vec<f64> {
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

/// The SSD reference's membership-inference attack: logistic regression on softmax entropy,
/// fitted to tell training images (members) from test images (non-members), then asked about
/// other images. A model that forgot a class should make its training images look unseen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MembershipAttack {
    /// Standardisation of the entropy feature.
    mean: f64,
    scale: f64,
    weight: f64,
    bias: f64,
}

impl MembershipAttack {
    /// L2 penalty on the weight, as a fraction of the data term; keeps separable data finite.
    const RIDGE: f64 = 1e-3;

    /// Fits by Newton's method on the mean logistic loss, both groups weighted equally.
    pub fn fit(members: &[f64], non_members: &[f64]) -> Self {
        let all: Vec<f64> = members.iter().chain(non_members).copied().collect();
        let n = all.len().max(1) as f64;
        let mean = all.iter().sum::<f64>() / n;
        let scale = (all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt().max(1e-12);
        let groups = [(members, 1.0), (non_members, 0.0)];
        let (mut weight, mut bias) = (0.0, 0.0);
        for _ in 0..50 {
            // Gradient and Hessian of the loss in (weight, bias).
            let (mut gw, mut gb, mut hww, mut hwb, mut hbb) = (Self::RIDGE * weight, 0.0, Self::RIDGE, 0.0, 0.0);
            for (xs, target) in groups {
                let share = 0.5 / xs.len().max(1) as f64;
                for &x in xs {
                    let z = (x - mean) / scale;
                    let p = 1.0 / (1.0 + (-(weight * z + bias)).exp());
                    let (g, h) = ((p - target) * share, p * (1.0 - p) * share);
                    gw += g * z;
                    gb += g;
                    hww += h * z * z;
                    hwb += h * z;
                    hbb += h;
                }
            }
            let det = hww * hbb - hwb * hwb;
            if det.abs() < 1e-18 {
                break;
            }
            let (dw, db) = ((hbb * gw - hwb * gb) / det, (hww * gb - hwb * gw) / det);
            weight -= dw;
            bias -= db;
            if dw.abs().max(db.abs()) < 1e-10 {
                break;
            }
        }
        Self { mean, scale, weight, bias }
    }

    pub fn is_member(&self, entropy: f64) -> bool {
        self.weight * (entropy - self.mean) / self.scale + self.bias > 0.0
    }

    /// Percent of `entropies` the attack calls members.
    pub fn member_percent(&self, entropies: &[f64]) -> f64 {
        let members = entropies.iter().filter(|&&e| self.is_member(e)).count();
        100.0 * members as f64 / entropies.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attack_calls_confident_images_members() {
        // Members are predicted confidently (low entropy), non-members less so, overlapping.
        let members: Vec<f64> = (0..200).map(|i| 0.01 * (i % 50) as f64).collect();
        let non_members: Vec<f64> = (0..300).map(|i| 0.3 + 0.01 * (i % 150) as f64).collect();
        let attack = MembershipAttack::fit(&members, &non_members);
        assert!(attack.member_percent(&members) > 95.0, "{attack:?}");
        assert!(attack.member_percent(&non_members) < 25.0, "{attack:?}");
        assert!(attack.is_member(0.0) && !attack.is_member(2.0));
        // The boundary lies between the groups, where the overlap is.
        let boundary = (0..300).map(|i| 0.01 * i as f64).find(|&e| !attack.is_member(e)).unwrap();
        assert!((0.3..=0.5).contains(&boundary), "boundary {boundary}");
        assert_eq!(attack.member_percent(&[]), 0.0);
    }

    #[test]
    fn splits_accuracy_and_loss_by_class() {
        let mut eval = Evaluation::default();
        eval.record(0, 0, 0.5, 0.1);
        eval.record(0, 1, 1.5, 0.2);
        eval.record(1, 1, 0.25, 0.3);
        eval.record(2, 2, 0.75, 0.4);
        let split = eval.forget_retain(0);
        assert_eq!(split.forget, AccLoss { accuracy: 50.0, loss: 1.0, images: 2 });
        assert_eq!(split.retain, AccLoss { accuracy: 100.0, loss: 0.5, images: 2 });
        assert_eq!(eval.overall().accuracy, 75.0);
        assert_eq!(eval.confusion[0][1], 1);
        assert!(eval.class(3).accuracy.is_nan(), "a class without images has no accuracy");
        assert_eq!(eval.entropies(|c| c != 0), vec![0.3, 0.4]);
    }
}
