//! What an unlearning run found: each model's accuracy and loss on the forget class and the
//! retained ones, how alpha was chosen, what the membership attack saw, and how long it took.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::request::Subsample;
use super::ssd::{Layers, SsdSettings};

/// Accuracy (percent) and mean NLL over a set of images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AccLoss {
    pub accuracy: f64,
    /// `"Infinity"` in JSON where it is infinite: the logit mask's loss on the class it masks.
    #[serde(with = "unbounded")]
    #[cfg_attr(feature = "schema", schemars(with = "unbounded::Unbounded"))]
    pub loss: f64,
    pub images: u64,
}

/// A float that may be plus infinity, as JSON holds it: a number, or `"Infinity"`. NaN
/// still has no form that reads back.
mod unbounded {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
    #[serde(untagged)]
    pub(super) enum Unbounded {
        Finite(f64),
        Infinite(Infinity),
    }

    #[derive(Deserialize)]
    #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
    pub(super) enum Infinity {
        Infinity,
    }

    pub(super) fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if *value == f64::INFINITY {
            serializer.serialize_str("Infinity")
        } else {
            serializer.serialize_f64(*value)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(match Unbounded::deserialize(deserializer)? {
            Unbounded::Finite(value) => value,
            Unbounded::Infinite(Infinity::Infinity) => f64::INFINITY,
        })
    }
}

/// The seed card's split: the forgotten class against all others.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ForgetRetain {
    pub forget: AccLoss,
    pub retain: AccLoss,
}

/// What one evaluation set showed, in the forms the results table and heatmaps need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EvalReport {
    pub overall: AccLoss,
    pub split: ForgetRetain,
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// One model on the test set and on a seeded training subset of the same size: how well it
/// forgot what it was trained on, next to how it generalises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModelReport {
    pub test: EvalReport,
    pub train: EvalReport,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DampenStats {
    pub selected: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Timings {
    /// Computing or loading the base model's penultimate features: on the classifier scope
    /// those of every image the run reads, on the others those the base model is evaluated
    /// on (which before 2026-12-06 counted in `evaluate_s`).
    #[serde(default)]
    pub features_s: f64,
    pub full_importance_s: f64,
    /// The full-set importance came from the on-disk cache.
    pub full_importance_cached: bool,
    pub forget_importance_s: f64,
    /// Choosing alpha (zero when it was given); includes the final dampening.
    pub calibrate_s: f64,
    pub dampen_s: f64,
    /// Evaluating both models, the probes and the relearning attack. The unlearned model is
    /// evaluated from the base model's features, in seconds, wherever its dampening changed
    /// nothing before `fc` (since 2026-12-07 on every scope), else from its images.
    pub evaluate_s: f64,
}

/// For people: the command line and the page show the phases alike.
impl fmt::Display for Timings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = if self.full_importance_cached { " (cached)" } else { "" };
        if self.features_s > 0.0 {
            write!(f, "features {:.1} s · ", self.features_s)?;
        }
        write!(
            f,
            "full-set importance {:.1} s{cached} · forget-set importance {:.1} s · choosing α {:.1} s · dampening {:.2} s · evaluation {:.1} s",
            self.full_importance_s, self.forget_importance_s, self.calibrate_s, self.dampen_s, self.evaluate_s
        )
    }
}

/// How `alpha: "auto"` chose alpha: the largest alpha whose dampened model recognises at most
/// `target_forget_accuracy` percent of the forget set, found by a walk down a log scale and a
/// bisection, within the requested scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Calibration {
    pub target_forget_accuracy: f64,
    /// Forget-set training images each step classified.
    pub images: usize,
    /// Every alpha tried, in order.
    pub steps: Vec<CalibrationStep>,
    /// False when no step met the target; the step that recognised the fewest was used.
    pub reached: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CalibrationStep {
    pub alpha: f64,
    pub layers: Layers,
    pub selected: u64,
    /// Percent of the calibration images still classified as the forget class; a step that
    /// stopped counting early (its target already missed) reports what it had counted.
    pub forget_accuracy: f64,
    pub reached: bool,
}

/// The membership-inference attack (`MembershipAttack`, fitted per model on retain-class
/// training images against test images) asked about the forget set's training images:
/// the percent it calls members. A retrained model's figure is the goal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Membership {
    pub before: f64,
    pub after: f64,
    pub images: usize,
    /// What the attack reads: the softmax entropy of each set's images, before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyHistograms>,
}

/// Histograms of softmax entropy (nats) over shared bins, for the membership picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EntropyHistograms {
    /// Bin edges, one more than each histogram's bins; from 0 to ln(10).
    pub edges: Vec<f64>,
    pub before: EntropyCounts,
    pub after: EntropyCounts,
}

/// One model's images per entropy bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EntropyCounts {
    /// The forget sample: training images of the forget class, which the attack asks about.
    pub forget: Vec<u64>,
    /// Members: the retain classes' training images the attack was fitted on.
    pub members: Vec<u64>,
    /// Non-members: the test images it was fitted on.
    pub non_members: Vec<u64>,
}

/// The outcome of forgetting one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UnlearnReport {
    pub model: String,
    pub device: String,
    pub forget_class: usize,
    pub settings: SsdSettings,
    /// The alpha used: as given, or as calibrated.
    pub alpha: f64,
    /// The parameters that could be dampened, as given.
    pub layers: Layers,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    pub subsample: Subsample,
    pub dampened: DampenStats,
    pub membership: Membership,
    pub before: ModelReport,
    pub after: ModelReport,
    pub timings: Timings,
    /// Test-set indices of the forget class's test images the unlearned model still calls by
    /// their class (at most [`MAX_STILL_RECOGNISED`]), for browsing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub still_recognised: Vec<usize>,
    /// The same recipe trained without the forget class, when one was supplied: the gold
    /// standard the unlearned model is measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrained: Option<RetrainedReport>,
    /// The base model that never predicts the forget class, on the same images: what hiding
    /// the class at the output achieves. (Absent from reports made before it existed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_mask: Option<LogitMaskReport>,
    /// What a fresh linear classifier reads from each model's penultimate features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeReport>,
    /// How fast fine-tuning brings the forget class back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relearning: Option<Relearning>,
}

/// The base model with the forget class's logit at minus infinity: no training, no
/// dampening. Every image it called that class gets its second choice. An unlearning that
/// does no better than this on the probe and the membership attack hides the class; it does
/// not forget it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LogitMaskReport {
    pub report: ModelReport,
    /// Membership attack's verdict on the forget set's training images, percent members.
    pub membership: f64,
}

/// A linear probe: a softmax classifier fitted afresh on a model's penultimate features of the
/// training subset (all ten classes), then asked to classify the test set from that model's
/// features. A model whose features still carry the forget class lets the probe find it again,
/// whatever its own output layer says. The logit mask leaves the features as they were, so its
/// probe is the base model's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProbeReport {
    /// Training images the probe was fitted on.
    pub train_images: u64,
    pub before: ForgetRetain,
    pub after: ForgetRetain,
}

/// The relearning attack: a copy of a model's output layer fine-tuned on that model's own
/// penultimate features of the training subset, with the forget class mixed into every batch,
/// and the test set classified after each number of steps. Knowledge hidden at the output
/// comes back in a handful of steps; knowledge the features no longer carry comes back slowly.
/// The logit mask is a rule, not weights, so it has no such curve: lifted, it is the
/// original's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Relearning {
    /// Training images the batches were drawn from, with replacement.
    pub train_images: u64,
    /// Fine-tuning steps in all; the curves have checkpoints up to this.
    pub steps: u32,
    /// Images per step, and of them of the forget class.
    pub batch: u32,
    pub forget_per_batch: u32,
    /// Plain SGD with momentum, no weight decay.
    pub learning_rate: f64,
    pub momentum: f64,
    /// The original model under the same fine-tuning.
    pub before: Vec<RelearnCheckpoint>,
    /// The unlearned model.
    pub after: Vec<RelearnCheckpoint>,
}

/// A model's test accuracy after `steps` fine-tuning steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RelearnCheckpoint {
    pub steps: u32,
    pub split: ForgetRetain,
}

/// A model retrained from scratch without the forget class, on the same sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RetrainedReport {
    pub model: String,
    pub report: ModelReport,
    /// Membership attack's verdict on the forget set's training images, percent members.
    pub membership: f64,
    /// The linear probe on its features (see [`ProbeReport`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ForgetRetain>,
    /// The relearning attack on it (see [`Relearning`]), where it was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relearning: Option<Vec<RelearnCheckpoint>>,
}

/// The most `UnlearnReport::still_recognised` lists.
pub const MAX_STILL_RECOGNISED: usize = 200;

/// Retain accuracy lost beyond this many points marks an unlearning as collapsed.
pub const COLLAPSE_POINTS: f64 = 10.0;

impl UnlearnReport {
    /// Points of retain test accuracy the unlearning cost (negative: gained).
    pub fn retain_drop(&self) -> f64 {
        self.before.test.split.retain.accuracy - self.after.test.split.retain.accuracy
    }

    /// Whether the retained classes fell by more than [`COLLAPSE_POINTS`]: the model lost
    /// more than the class.
    pub fn collapsed(&self) -> bool {
        self.retain_drop() > COLLAPSE_POINTS
    }
}

impl Timings {
    /// Seconds the unlearning itself took once the full-set importance exists: the forget-set
    /// importance, choosing alpha, and dampening; evaluation excluded.
    pub fn unlearn_s(&self) -> f64 {
        self.forget_importance_s + self.calibrate_s + self.dampen_s
    }
}
