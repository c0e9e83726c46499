//! What an unlearning run is asked to do and what it found.

use serde::{Deserialize, Serialize};

use crate::cifar::CLASSES;
use crate::metrics::{AccLoss, Evaluation, ForgetRetain};


/// The order of the full training set when its importance is taken in mini-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SetOrder {
    /// Sorted by class, as the SSD reference code builds its loader.
    ClassOrdered,
    /// Mixed batches, shuffled with a seed.
    Shuffled { seed: u64 },
}

/// Selective Synaptic Dampening's settings, recorded with every result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SsdSettings {
    /// A parameter is selected where `imp_forget > alpha * imp_full`.
    pub alpha: f64,
    /// Selected parameters are scaled by `min(lambda * imp_full / imp_forget, 1)`.
    pub lambda: f64,
    /// Mini-batch size of the importance passes.
    pub importance_batch: usize,
    pub full_order: SetOrder,
}

impl Default for SsdSettings {
    /// The SSD paper's settings for this task, with the reference code's batch and order.
    fn default() -> Self {
        Self { alpha: 10.0, lambda: 1.0, importance_batch: 64, full_order: SetOrder::ClassOrdered }
    }
}

impl SsdSettings {
    /// Rejects settings that cannot give a meaningful result.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("alpha must be a positive number, got {}", self.alpha));
        }
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return Err(format!("lambda must be a positive number, got {}", self.lambda));
        }
        if self.importance_batch == 0 {
            return Err("importance batch size must be at least 1".into());
        }
        Ok(())
    }
}

/// Caps on the sets an unlearning run reads, so that a CPU run finishes in minutes.
/// `None` means the whole set, which is the default and the real experiment. The training
/// subset that is evaluated has as many images as the evaluated test set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Subsample {
    pub forget: Option<usize>,
    pub full: Option<usize>,
    pub test: Option<usize>,
}

impl Subsample {
    pub fn is_full(&self) -> bool {
        *self == Self::default()
    }
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

impl EvalReport {
    pub fn new(evaluation: &Evaluation, forget_class: usize) -> Self {
        Self {
            overall: evaluation.overall(),
            split: evaluation.forget_retain(forget_class),
            per_class_accuracy: evaluation.per_class_accuracy(),
            confusion: evaluation.confusion.clone(),
        }
    }
}

/// One model on the test set and on a seeded training subset of the same size: how well it
/// forgot what it was trained on, next to how it generalises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModelReport {
    pub test: EvalReport,
    pub train: EvalReport,
}

impl ModelReport {
    pub fn new(test: &Evaluation, train: &Evaluation, forget_class: usize) -> Self {
        Self { test: EvalReport::new(test, forget_class), train: EvalReport::new(train, forget_class) }
    }
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
    pub full_importance_s: f64,
    /// The full-set importance came from the on-disk cache.
    pub full_importance_cached: bool,
    pub forget_importance_s: f64,
    pub dampen_s: f64,
    pub evaluate_s: f64,
}

/// What a long job is doing, as the terminal and the server's event stream show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProgressEvent {
    /// For example "train epoch 3/20", "importance (forget set)", "evaluate".
    pub phase: String,
    pub done: u64,
    pub total: u64,
    pub images_per_s: f64,
    /// Unknown until the phase has made some progress.
    pub eta_s: Option<f64>,
    /// Running mean loss of the phase, where it has one.
    pub loss: Option<f64>,
}

/// The outcome of forgetting one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UnlearnReport {
    pub model: String,
    pub device: String,
    pub forget_class: usize,
    pub settings: SsdSettings,
    pub subsample: Subsample,
    pub dampened: DampenStats,
    pub before: ModelReport,
    pub after: ModelReport,
    pub timings: Timings,
}

/// The seed card's table, on the test set:
/// `Model | Forget class | Forget class acc (loss) | Retain class acc (loss)`.
pub fn seed_table_markdown(reports: &[UnlearnReport]) -> String {
    let cell = |m: &AccLoss| format!("{:.2} ({:.4})", m.accuracy, m.loss);
    let mut table = String::from(
        "| Model | Forget class | Forget class acc (loss) | Retain class acc (loss) |\n|---|---|---|---|\n",
    );
    for report in reports {
        for (label, eval) in [("original", &report.before.test), ("SSD", &report.after.test)] {
            table.push_str(&format!(
                "| {label} | {} | {} | {} |\n",
                CLASSES[report.forget_class],
                cell(&eval.split.forget),
                cell(&eval.split.retain)
            ));
        }
    }
    table
}

/// The same table as CSV, with accuracy and loss in columns of their own.
pub fn seed_table_csv(reports: &[UnlearnReport]) -> String {
    let mut table = String::from("model,forget_class,forget_accuracy,forget_loss,retain_accuracy,retain_loss\n");
    for report in reports {
        for (label, eval) in [("original", &report.before.test), ("SSD", &report.after.test)] {
            let (forget, retain) = (&eval.split.forget, &eval.split.retain);
            table.push_str(&format!(
                "{label},{},{:.2},{:.4},{:.2},{:.4}\n",
                CLASSES[report.forget_class], forget.accuracy, forget.loss, retain.accuracy, retain.loss
            ));
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_reject_nonsense() {
        assert!(SsdSettings::default().validate().is_ok());
        for bad in [
            SsdSettings { alpha: f64::NAN, ..Default::default() },
            SsdSettings { alpha: -1.0, ..Default::default() },
            SsdSettings { lambda: f64::INFINITY, ..Default::default() },
            SsdSettings { importance_batch: 0, ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn table_has_a_row_per_model_and_class() {
        let mut eval = Evaluation::default();
        eval.record(5, 5, 0.5);
        eval.record(1, 1, 0.25);
        let report = UnlearnReport {
            model: "m".into(),
            device: "cpu".into(),
            forget_class: 5,
            settings: SsdSettings::default(),
            subsample: Subsample::default(),
            dampened: DampenStats { selected: 1, total: 2 },
            before: ModelReport::new(&eval, &eval, 5),
            after: ModelReport::new(&eval, &eval, 5),
            timings: Timings::default(),
        };
        let table = seed_table_markdown(std::slice::from_ref(&report));
        assert!(table.contains("| original | dog | 100.00 (0.5000) | 100.00 (0.2500) |"), "{table}");
        assert_eq!(table.lines().count(), 4);
        let csv = seed_table_csv(&[report]);
        assert_eq!(csv.lines().nth(2), Some("SSD,dog,100.00,0.5000,100.00,0.2500"), "{csv}");
    }
}
