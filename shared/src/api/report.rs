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

/// SSD's selection threshold: a parameter is dampened where `imp_forget > alpha * imp_full`.
/// JSON: a positive number, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    /// As given; the seed's value is 10.
    Fixed(f64),
    /// Calibrated per request: the largest alpha whose dampened model no longer recognises
    /// the forget set (see `Calibration`).
    Auto,
}

impl Alpha {
    /// The seed card's value.
    pub const SEED: Self = Self::Fixed(10.0);
}

impl std::fmt::Display for Alpha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(alpha) => write!(f, "{alpha}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl std::str::FromStr for Alpha {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "auto" {
            return Ok(Self::Auto);
        }
        match text.parse::<f64>() {
            Ok(alpha) if alpha.is_finite() && alpha > 0.0 => Ok(Self::Fixed(alpha)),
            _ => Err(format!("alpha must be a positive number or `auto`, got '{text}'")),
        }
    }
}

impl Serialize for Alpha {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(alpha) => serializer.serialize_f64(*alpha),
            Self::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Alpha {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Alpha;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a positive number or \"auto\"")
            }
            fn visit_f64<E: serde::de::Error>(self, alpha: f64) -> Result<Alpha, E> {
                Ok(Alpha::Fixed(alpha))
            }
            fn visit_u64<E: serde::de::Error>(self, alpha: u64) -> Result<Alpha, E> {
                Ok(Alpha::Fixed(alpha as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, alpha: i64) -> Result<Alpha, E> {
                Ok(Alpha::Fixed(alpha as f64))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Alpha, E> {
                match text {
                    "auto" => Ok(Alpha::Auto),
                    _ => Err(E::custom(format!("alpha must be a positive number or \"auto\", got \"{text}\""))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Alpha {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Alpha".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "SSD's selection threshold: a positive number, or \"auto\" to calibrate it per request.",
            "oneOf": [
                { "type": "number", "exclusiveMinimum": 0 },
                { "type": "string", "enum": ["auto"] },
            ]
        })
    }
}

/// The parameters SSD may dampen, by torchvision key.
///
/// The narrow scopes open only the forget class's row of the classifier (its weights and
/// bias): the other rows make the other classes' logits, and their training-set importance
/// cannot protect them, since it vanishes on the training images the model fits (forgetting
/// airplane with all of `fc` dampened the ship row and cost ship 20 of 49 test images).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Layers {
    /// Every weight and bias, as the SSD paper does.
    All,
    /// The last residual stage (`layer4`) and the forget class's row of the classifier.
    LastStage,
    /// The forget class's row of the classifier (`fc`) alone.
    Classifier,
}

/// How much of one parameter tensor a scope opens to dampening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Nothing,
    Whole,
    /// The elements that feed the forget class's logit.
    ForgetClassRow,
}

impl Layers {
    /// Narrowest first.
    pub const ALL: [Self; 3] = [Self::Classifier, Self::LastStage, Self::All];

    /// For people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::All => "all layers",
            Self::LastStage => "layer4 + class row of fc",
            Self::Classifier => "class row of fc",
        }
    }

    pub fn reach(self, key: &str) -> Reach {
        let classifier = key.starts_with("fc.");
        match self {
            Self::All => Reach::Whole,
            Self::LastStage if key.starts_with("layer4.") => Reach::Whole,
            Self::LastStage | Self::Classifier if classifier => Reach::ForgetClassRow,
            Self::LastStage | Self::Classifier => Reach::Nothing,
        }
    }
}

/// Selective Synaptic Dampening's settings, recorded with every result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SsdSettings {
    pub alpha: Alpha,
    /// Selected parameters are scaled by `min(lambda * imp_full / imp_forget, 1)`.
    pub lambda: f64,
    pub layers: Layers,
    /// Mini-batch size of the importance passes.
    pub importance_batch: usize,
    pub full_order: SetOrder,
}

impl Default for SsdSettings {
    /// The project's default: alpha calibrated per request, only the classifier dampened;
    /// importances as the seed computes them.
    fn default() -> Self {
        // Confined to the forget class's row, stronger dampening costs other classes nothing,
        // and lets the classifier alone forget where lambda 1 needed layer4 (docs/unlearning.md).
        Self { alpha: Alpha::Auto, lambda: 0.1, layers: Layers::Classifier, ..Self::seed() }
    }
}

impl SsdSettings {
    /// The seed card's preset: the SSD paper's settings for this task, with the reference
    /// code's batch and class-ordered full set.
    pub fn seed() -> Self {
        Self { alpha: Alpha::SEED, lambda: 1.0, layers: Layers::All, importance_batch: 64, full_order: SetOrder::ClassOrdered }
    }

    /// Rejects settings that cannot give a meaningful result.
    pub fn validate(&self) -> Result<(), String> {
        if let Alpha::Fixed(alpha) = self.alpha {
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(format!("alpha must be a positive number or \"auto\", got {alpha}"));
            }
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
    /// Choosing alpha (zero when it was given); includes the final dampening.
    pub calibrate_s: f64,
    pub dampen_s: f64,
    pub evaluate_s: f64,
}

/// How `alpha: "auto"` chose alpha: the largest alpha whose dampened model recognises at most
/// `target_forget_accuracy` percent of the forget set, found by a walk down a log scale and a
/// bisection; from the classifier, the scope widens to the last stage if the classifier alone
/// cannot get there.
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Membership {
    pub before: f64,
    pub after: f64,
    pub images: usize,
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
    /// The alpha used: as given, or as calibrated.
    pub alpha: f64,
    /// The parameters dampened: as given, or as calibration widened them.
    pub layers: Layers,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    pub subsample: Subsample,
    pub dampened: DampenStats,
    pub membership: Membership,
    pub before: ModelReport,
    pub after: ModelReport,
    pub timings: Timings,
    /// The same recipe trained without the forget class, when one was supplied: the gold
    /// standard the unlearned model is measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrained: Option<RetrainedReport>,
}

/// A model retrained from scratch without the forget class, on the same sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RetrainedReport {
    pub model: String,
    pub report: ModelReport,
    /// Membership attack's verdict on the forget set's training images, percent members.
    pub membership: f64,
}

impl Timings {
    /// Seconds the unlearning itself took once the full-set importance exists: the forget-set
    /// importance, choosing alpha, and dampening; evaluation excluded.
    pub fn unlearn_s(&self) -> f64 {
        self.forget_importance_s + self.calibrate_s + self.dampen_s
    }
}

/// The seed card's columns (`Model | Forget class | Forget class acc (loss) | Retain class
/// acc (loss)`), then the alpha used, the membership attack's verdict on the forget set's
/// training images, and the seconds unlearning took.
pub const TABLE_HEADER: [&str; 7] =
    ["Model", "Forget class", "Forget class acc (loss)", "Retain class acc (loss)", "α", "MIA (% members)", "Time (s)"];

/// One row of the seed card's table, with the columns this project adds.
pub struct TableRow<'a> {
    /// `original`, `SSD` or `retrained`.
    pub label: &'static str,
    pub class: &'static str,
    pub eval: &'a EvalReport,
    pub alpha: Option<f64>,
    pub member_percent: f64,
    pub seconds: Option<f64>,
}

impl TableRow<'_> {
    /// The row as the table shows it, under [`TABLE_HEADER`].
    pub fn cells(&self) -> [String; 7] {
        let acc_loss = |m: &AccLoss| format!("{:.2} ({:.4})", m.accuracy, m.loss);
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "–".into());
        [
            self.label.to_owned(),
            self.class.to_owned(),
            acc_loss(&self.eval.split.forget),
            acc_loss(&self.eval.split.retain),
            or_dash(self.alpha.map(|a| format!("{a:.3}"))),
            format!("{:.1}", self.member_percent),
            or_dash(self.seconds.map(|s| format!("{s:.1}"))),
        ]
    }
}

/// Original and SSD for every report, then the retrained model where there is one.
pub fn table_rows(reports: &[UnlearnReport]) -> impl Iterator<Item = TableRow<'_>> {
    reports.iter().flat_map(|report| {
        let class = CLASSES[report.forget_class];
        let retrained = report.retrained.as_ref().map(|r| TableRow {
            label: "retrained",
            class,
            eval: &r.report.test,
            alpha: None,
            member_percent: r.membership,
            seconds: None,
        });
        [
            TableRow { label: "original", class, eval: &report.before.test, alpha: None, member_percent: report.membership.before, seconds: None },
            TableRow {
                label: "SSD",
                class,
                eval: &report.after.test,
                alpha: Some(report.alpha),
                member_percent: report.membership.after,
                seconds: Some(report.timings.unlearn_s()),
            },
        ]
        .into_iter()
        .chain(retrained)
    })
}

/// The seed card's table on the test set, as Markdown.
pub fn seed_table_markdown(reports: &[UnlearnReport]) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut table = line(&TABLE_HEADER.map(String::from));
    table.push_str(&format!("|{}\n", "---|".repeat(TABLE_HEADER.len())));
    for row in table_rows(reports) {
        table.push_str(&line(&row.cells()));
    }
    table
}

/// The same table as CSV, with accuracy and loss in columns of their own.
pub fn seed_table_csv(reports: &[UnlearnReport]) -> String {
    let or_empty = |value: Option<f64>| value.map(|v| v.to_string()).unwrap_or_default();
    let mut table = String::from("model,forget_class,forget_accuracy,forget_loss,retain_accuracy,retain_loss,alpha,mia_member_percent,seconds\n");
    for row in table_rows(reports) {
        let (forget, retain) = (&row.eval.split.forget, &row.eval.split.retain);
        table.push_str(&format!(
            "{},{},{:.2},{:.4},{:.2},{:.4},{},{:.1},{}\n",
            row.label,
            row.class,
            forget.accuracy,
            forget.loss,
            retain.accuracy,
            retain.loss,
            or_empty(row.alpha),
            row.member_percent,
            or_empty(row.seconds.map(|s| (s * 10.0).round() / 10.0)),
        ));
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
            SsdSettings { alpha: Alpha::Fixed(f64::NAN), ..Default::default() },
            SsdSettings { alpha: Alpha::Fixed(-1.0), ..Default::default() },
            SsdSettings { lambda: f64::INFINITY, ..Default::default() },
            SsdSettings { importance_batch: 0, ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn alpha_is_a_number_or_auto() {
        let parse = |json: &str| serde_json::from_str::<Alpha>(json);
        assert_eq!(parse("10").unwrap(), Alpha::Fixed(10.0));
        assert_eq!(parse("2.5").unwrap(), Alpha::Fixed(2.5));
        assert_eq!(parse("\"auto\"").unwrap(), Alpha::Auto);
        assert!(parse("\"sometimes\"").unwrap_err().to_string().contains("positive number or \"auto\""));
        assert!(parse("true").is_err());
        for alpha in [Alpha::Auto, Alpha::Fixed(3.5)] {
            assert_eq!(parse(&serde_json::to_string(&alpha).unwrap()).unwrap(), alpha);
            assert_eq!(alpha.to_string().parse::<Alpha>().unwrap(), alpha);
        }
        assert!("0".parse::<Alpha>().is_err() && "nan".parse::<Alpha>().is_err());
        assert_eq!(SsdSettings::seed().alpha, Alpha::SEED);
        assert_eq!(SsdSettings::default(), SsdSettings { alpha: Alpha::Auto, lambda: 0.1, layers: Layers::Classifier, ..SsdSettings::seed() });
    }

    #[test]
    fn narrow_scopes_open_only_the_forget_class_row_of_the_classifier() {
        let keys = ["conv1.weight", "layer3.1.bn2.bias", "layer4.0.conv1.weight", "fc.weight", "fc.bias"];
        let reach = |layers: Layers| keys.map(|key| layers.reach(key));
        use Reach::*;
        assert_eq!(reach(Layers::All), [Whole; 5]);
        assert_eq!(reach(Layers::LastStage), [Nothing, Nothing, Whole, ForgetClassRow, ForgetClassRow]);
        assert_eq!(reach(Layers::Classifier), [Nothing, Nothing, Nothing, ForgetClassRow, ForgetClassRow]);
    }

    #[test]
    fn table_has_a_row_per_model_and_class() {
        let mut eval = Evaluation::default();
        eval.record(5, 5, 0.5, 0.1);
        eval.record(1, 1, 0.25, 0.1);
        let report = UnlearnReport {
            model: "m".into(),
            device: "cpu".into(),
            forget_class: 5,
            settings: SsdSettings::default(),
            alpha: 10.0,
            layers: Layers::All,
            calibration: None,
            subsample: Subsample::default(),
            dampened: DampenStats { selected: 1, total: 2 },
            membership: Membership { before: 90.0, after: 10.0, images: 1 },
            before: ModelReport::new(&eval, &eval, 5),
            after: ModelReport::new(&eval, &eval, 5),
            timings: Timings { forget_importance_s: 2.0, dampen_s: 0.5, ..Timings::default() },
            retrained: None,
        };
        let table = seed_table_markdown(std::slice::from_ref(&report));
        assert!(table.contains("| original | dog | 100.00 (0.5000) | 100.00 (0.2500) | – | 90.0 | – |"), "{table}");
        assert!(table.contains("| SSD | dog | 100.00 (0.5000) | 100.00 (0.2500) | 10.000 | 10.0 | 2.5 |"), "{table}");
        assert_eq!(table.lines().count(), 4);
        let csv = seed_table_csv(std::slice::from_ref(&report));
        assert_eq!(csv.lines().nth(2), Some("SSD,dog,100.00,0.5000,100.00,0.2500,10,10.0,2.5"), "{csv}");

        let retrained = UnlearnReport {
            retrained: Some(RetrainedReport { model: "without-dog".into(), report: ModelReport::new(&eval, &eval, 5), membership: 12.5 }),
            ..report
        };
        let table = seed_table_markdown(&[retrained]);
        assert_eq!(table.lines().count(), 5);
        assert!(table.lines().last().unwrap().starts_with("| retrained | dog | 100.00 (0.5000) |"), "{table}");
    }
}
