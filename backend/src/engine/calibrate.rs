//! Choosing SSD's alpha per request. Dampening is instant once the importances exist, so the
//! largest alpha whose model stops recognising the forget set is searched for directly, each
//! step classifying a sample of the forget set. Forgetting is not monotone in alpha (a smaller
//! alpha also dampens what other classes need, and their lost logits can hand the forget class
//! back some images), so the search walks down from the largest alpha and refines only the
//! first bracket where the target is met.

use burn::prelude::*;
use unlearn_shared::api::{Calibration, CalibrationStep, DampenStats, SsdSettings};
use unlearn_shared::model::ResNet;

use super::batch::labels;
use super::progress::{Cancelled, PhaseTimer, Progress, Step};
use super::ssd::{dampen, Importances};
use super::Inputs;

/// What the search aims for and where it looks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CalibrationConfig {
    /// Highest acceptable percent of forget-set images still classified as their class.
    pub(crate) target_forget_accuracy: f64,
    /// The alphas searched; the largest is tried first, the smallest is the fallback.
    pub(crate) alpha_range: (f64, f64),
    /// Ratio between the alphas of the downward walk.
    pub(crate) step: f64,
    /// The bracket the walk finds is bisected until its ratio is below this.
    pub(crate) resolution: f64,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self { target_forget_accuracy: 1.0, alpha_range: (0.5, 256.0), step: 2.0, resolution: 1.1 }
    }
}

/// Images per forward pass while counting.
const COUNT_BATCH: usize = 100;

/// The phase of every calibration step, followed by the step's number and alpha.
pub(crate) const PHASE: &str = "calibrate alpha";
/// Steps a calibration usually takes, and how many of them reach the target and so classify
/// the whole sample (the others stop after a batch): 9-12 steps over the ten classes
/// (docs/unlearning.md).
const EXPECTED_STEPS: usize = 11;
const EXPECTED_REACHING_STEPS: usize = 3;

/// What a calibration on a forget sample of `sample` images is expected to classify, at
/// `cost_per_image` forward-pass images each.
pub(crate) fn plan(sample: usize, cost_per_image: f64) -> Step {
    let images = EXPECTED_STEPS * sample.min(COUNT_BATCH) + EXPECTED_REACHING_STEPS * sample.saturating_sub(COUNT_BATCH);
    Step::new(PHASE, images, cost_per_image)
}

/// The dampened model at the calibrated alpha, with what the search saw.
pub(crate) struct Calibrated<B: Backend> {
    pub(crate) model: ResNet<B>,
    pub(crate) alpha: f64,
    pub(crate) dampened: DampenStats,
    pub(crate) calibration: Calibration,
}

/// Searches alpha for `model` forgetting the class of `importances` within `settings.layers`,
/// judged on `forget_sample` (images of that class); `settings.alpha` is ignored.
pub(crate) fn calibrate<B: Backend>(
    model: &ResNet<B>,
    importances: &Importances<B>,
    settings: &SsdSettings,
    config: &CalibrationConfig,
    forget_sample: impl Inputs,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Calibrated<B>, Cancelled> {
    let images = forget_sample.images().indices.len();
    let allowed = (config.target_forget_accuracy / 100.0 * images as f64).floor() as usize;
    let layers = settings.layers;
    let mut steps: Vec<CalibrationStep> = Vec::new();
    let found = search(config, |alpha| {
        let phase = format!("{PHASE}: step {}, α {alpha:.3} on {}", steps.len() + 1, layers.describe());
        let timer = PhaseTimer::start(phase, images as u64, progress);
        let (candidate, dampened) = dampen(model.clone(), importances, alpha, settings);
        let (recognised, counted) = count_recognised(&candidate, forget_sample, allowed, device, &timer, progress)?;
        let reached = recognised <= allowed;
        let forget_accuracy = 100.0 * recognised as f64 / counted.max(1) as f64;
        steps.push(CalibrationStep { alpha, layers, selected: dampened.selected, forget_accuracy, reached });
        Ok(reached)
    })?;
    let reached = found.is_some();
    // Missed: the step that recognised the fewest, the largest alpha among equals (steps
    // are in that order).
    let alpha = found.unwrap_or_else(|| steps.iter().fold(&steps[0], |best, step| if step.forget_accuracy < best.forget_accuracy { step } else { best }).alpha);
    let (model, dampened) = dampen(model.clone(), importances, alpha, settings);
    let calibration = Calibration { target_forget_accuracy: config.target_forget_accuracy, images, steps, reached };
    Ok(Calibrated { model, alpha, dampened, calibration })
}

/// The largest alpha for which `forgets` holds, to `config.resolution`: a walk down from the
/// top of the range, then a bisection of the first bracket. `None` if no alpha in the range
/// forgets.
fn search(config: &CalibrationConfig, mut forgets: impl FnMut(f64) -> Result<bool, Cancelled>) -> Result<Option<f64>, Cancelled> {
    let (smallest, largest) = config.alpha_range;
    // `low` forgets, `high` (when there is one) does not.
    let (mut low, mut high) = (largest, None);
    loop {
        if forgets(low)? {
            break;
        }
        if low <= smallest {
            return Ok(None);
        }
        high = Some(low);
        low = (low / config.step).max(smallest);
    }
    if let Some(mut high) = high {
        while high / low > config.resolution {
            let middle = (low * high).sqrt();
            if forgets(middle)? {
                low = middle;
            } else {
                high = middle;
            }
        }
    }
    Ok(Some(low))
}

/// How many of `images` the model classifies as their class, and how many it looked at:
/// counting stops once more than `limit` are recognised. Each batch is reported by `timer`.
fn count_recognised<B: Backend>(
    model: &ResNet<B>,
    inputs: impl Inputs,
    limit: usize,
    device: &B::Device,
    timer: &PhaseTimer,
    progress: &mut dyn Progress,
) -> Result<(usize, usize), Cancelled> {
    let images = inputs.images();
    let (mut recognised, mut counted) = (0, 0);
    for chunk in images.indices.chunks(COUNT_BATCH) {
        if progress.cancelled() {
            return Err(Cancelled);
        }
        let predicted = inputs.logits(model, chunk, device).argmax(1).squeeze_dim::<1>(1);
        recognised += predicted.equal(labels::<B>(images.split, chunk, device)).int().sum().into_scalar().elem::<i64>() as usize;
        counted += chunk.len();
        progress.report(&timer.event(counted as u64));
        if recognised > limit {
            break;
        }
    }
    Ok((recognised, counted))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a made-up response: forgets inside `window`.
    fn searched(window: std::ops::RangeInclusive<f64>) -> (Option<f64>, Vec<f64>) {
        let mut tried = Vec::new();
        let found = search(&CalibrationConfig::default(), |alpha| {
            tried.push(alpha);
            Ok(window.contains(&alpha))
        })
        .unwrap();
        (found, tried)
    }

    #[test]
    fn search_finds_the_largest_forgetting_alpha_to_the_resolution() {
        let (found, tried) = searched(0.0..=9.5);
        let found = found.unwrap();
        assert!(found <= 9.5 && found * CalibrationConfig::default().resolution > 9.5, "{found}");
        assert_eq!(&tried[..6], &[256.0, 128.0, 64.0, 32.0, 16.0, 8.0]);
        assert!(tried.len() < 12, "{tried:?}");
    }

    #[test]
    fn search_takes_the_first_window_from_the_top_even_if_smaller_alphas_stop_forgetting() {
        // Forgetting is not monotone: only 4..=6 forgets; the walk finds 4 and refines up.
        let (found, _) = searched(4.0..=6.0);
        let found = found.unwrap();
        assert!((4.0..=6.0).contains(&found) && found * 1.1 > 6.0, "{found}");
    }

    #[test]
    fn search_reports_a_miss() {
        assert_eq!(searched(1000.0..=2000.0).0, None);
        let (found, tried) = searched(300.0..=400.0);
        assert_eq!(found, None);
        assert_eq!(*tried.last().unwrap(), 0.5, "the walk ends at the smallest alpha");
        // Everything forgets: the largest alpha is the answer at once.
        assert_eq!(searched(0.0..=1000.0), (Some(256.0), vec![256.0]));
    }
}
