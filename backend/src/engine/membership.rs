//! Membership inference: does a model treat images as ones it was trained on?

/// The SSD reference's membership-inference attack: logistic regression on softmax entropy,
/// fitted to tell training images (members) from test images (non-members), then asked about
/// other images. A model that forgot a class should make its training images look unseen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MembershipAttack {
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
    pub(crate) fn fit(members: &[f64], non_members: &[f64]) -> Self {
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

    pub(crate) fn is_member(&self, entropy: f64) -> bool {
        self.weight * (entropy - self.mean) / self.scale + self.bias > 0.0
    }

    /// Percent of `entropies` the attack calls members.
    pub(crate) fn member_percent(&self, entropies: &[f64]) -> f64 {
        let members = entropies.iter().filter(|&&e| self.is_member(e)).count();
        100.0 * members as f64 / entropies.len().max(1) as f64
    }
}

/// Bins of the membership picture's entropy histograms.
pub(crate) const ENTROPY_BINS: usize = 20;

/// The largest softmax entropy over CIFAR-10's classes: ln 10 nats, every class equally likely.
fn max_entropy() -> f64 {
    (unlearn_shared::cifar::NUM_CLASSES as f64).ln()
}

/// The edges of `bins` equal bins from 0 to ln 10.
pub(crate) fn entropy_edges(bins: usize) -> Vec<f64> {
    (0..=bins).map(|i| max_entropy() * i as f64 / bins as f64).collect()
}

/// How many of `entropies` fall in each of `bins` equal bins from 0 to ln 10 (a bin holds its
/// lower edge); values past either end, such as ln 10 itself or a rounding error beyond it,
/// count in the nearest end bin.
pub(crate) fn entropy_histogram(entropies: &[f64], bins: usize) -> Vec<u64> {
    let mut counts = vec![0; bins];
    for &entropy in entropies {
        let bin = (entropy / max_entropy() * bins as f64).floor().clamp(0.0, (bins - 1) as f64) as usize;
        counts[bin] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropies_are_counted_in_equal_bins_from_zero_to_ln_10() {
        let ln10 = 10f64.ln();
        let edges = entropy_edges(4);
        assert_eq!(edges.len(), 5);
        assert_eq!((edges[0], edges[2], edges[4]), (0.0, ln10 / 2.0, ln10));
        // Bins of width ln 10 / 4, about 0.576: a bin holds its lower edge; the ends take
        // what lies beyond them.
        let entropies = [0.0, 0.1, 0.575, 0.58, ln10 / 2.0, 2.0, ln10, ln10 + 1e-9, -1e-9];
        assert_eq!(entropy_histogram(&entropies, 4), vec![4, 1, 1, 3]);
        assert_eq!(entropy_histogram(&[], 4), vec![0; 4]);
        assert_eq!(entropy_histogram(&[1.0; 7], ENTROPY_BINS).iter().sum::<u64>(), 7);
    }

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
}
