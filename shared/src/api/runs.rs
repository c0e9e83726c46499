//! Runs: what a client asks the server to do, and what it can learn about it later.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::report::{Alpha, Layers, ProgressEvent, SetOrder, SsdSettings, Subsample, UnlearnReport};
use crate::cifar::{class_from_str, CLASSES, NUM_CLASSES};
use crate::metrics::AccLoss;

pub type RunId = i64;

/// A CIFAR-10 class: requests may name it (`"dog"`) or number it (`5`); answers number it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClassId(usize);

impl ClassId {
    pub fn new(index: usize) -> Option<Self> {
        (index < NUM_CLASSES).then_some(Self(index))
    }

    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for ClassId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, CLASSES[self.0])
    }
}

impl<'de> Deserialize<'de> for ClassId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Number(u64),
            Name(String),
        }
        let unknown = |given: String| serde::de::Error::custom(format!("unknown class {given}; use 0-9 or one of {}", CLASSES.join(", ")));
        match Given::deserialize(deserializer)? {
            Given::Number(n) => usize::try_from(n).ok().and_then(Self::new).ok_or_else(|| unknown(n.to_string())),
            Given::Name(name) => class_from_str(&name).map(Self).ok_or_else(|| unknown(format!("'{name}'"))),
        }
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for ClassId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ClassId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A CIFAR-10 class by number or name; answers give the number.",
            "oneOf": [
                { "type": "integer", "minimum": 0, "maximum": NUM_CLASSES - 1 },
                { "type": "string", "enum": CLASSES },
            ]
        })
    }
}

fn default_model() -> String {
    "base".into()
}

/// Forgetting with SSD: one class (`kind: unlearn`) or each class in turn (`kind: sweep`).
/// Left-out settings take the project's defaults (`SsdSettings::default()`); the seed card's
/// SSD is `"alpha": 10, "layers": "all"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UnlearnRequest {
    #[serde(default = "default_model")]
    pub model: String,
    /// Required by `unlearn`; a `sweep` forgets every class and takes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ClassId>,
    /// `"auto"` (the default) calibrates it for the class; the seed's value is 10.
    #[serde(default = "defaults::alpha")]
    pub alpha: Alpha,
    #[serde(default = "defaults::lambda")]
    pub lambda: f64,
    #[serde(default = "defaults::layers")]
    pub layers: Layers,
    #[serde(default = "defaults::importance_batch")]
    pub importance_batch: usize,
    #[serde(default = "defaults::full_order")]
    pub full_order: SetOrder,
    /// Caps on the sets read; the server's default when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsample: Option<Subsample>,
}

mod defaults {
    use super::*;

    pub fn alpha() -> Alpha {
        SsdSettings::default().alpha
    }
    pub fn lambda() -> f64 {
        SsdSettings::default().lambda
    }
    pub fn layers() -> Layers {
        SsdSettings::default().layers
    }
    pub fn importance_batch() -> usize {
        SsdSettings::default().importance_batch
    }
    pub fn full_order() -> SetOrder {
        SsdSettings::default().full_order
    }
}

impl UnlearnRequest {
    pub fn settings(&self) -> SsdSettings {
        SsdSettings { alpha: self.alpha, lambda: self.lambda, layers: self.layers, importance_batch: self.importance_batch, full_order: self.full_order }
    }
}

/// Evaluating a model on the test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EvalRequest {
    #[serde(default = "default_model")]
    pub model: String,
    /// Evaluate on a seeded random subset of this many test images.
    #[serde(default)]
    pub test_limit: Option<usize>,
}

/// Training a new base model with the seed recipe; it becomes the model `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    pub name: String,
    #[serde(default = "seed_recipe::epochs")]
    pub epochs: usize,
    #[serde(default = "seed_recipe::batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    /// Channels of the first stage: 64 is ResNet18, smaller is for quick tests.
    #[serde(default = "seed_recipe::width")]
    pub width: usize,
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// Leave this class out: the retrain-from-scratch baseline of forgetting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_class: Option<ClassId>,
    #[serde(default)]
    pub test_limit: Option<usize>,
}

/// The seed recipe's shape, which the trainer's defaults also take.
pub mod seed_recipe {
    pub const EPOCHS: usize = 20;
    pub const BATCH_SIZE: usize = 256;
    /// Channels of the first stage: ResNet18.
    pub const WIDTH: usize = 64;

    pub(super) fn epochs() -> usize {
        EPOCHS
    }
    pub(super) fn batch_size() -> usize {
        BATCH_SIZE
    }
    pub(super) fn width() -> usize {
        WIDTH
    }
}

/// `POST /api/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunRequest {
    Unlearn(UnlearnRequest),
    Sweep(UnlearnRequest),
    Eval(EvalRequest),
    Train(TrainRequest),
}

impl RunRequest {
    /// Checks what the types cannot: a person-readable reason for each problem.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Unlearn(request) if request.class.is_none() => Err("an unlearn run needs a `class` to forget".into()),
            Self::Sweep(request) if request.class.is_some() => Err("a sweep forgets every class in turn; leave out `class`".into()),
            Self::Unlearn(request) | Self::Sweep(request) => request.settings().validate(),
            Self::Eval(_) => Ok(()),
            Self::Train(request) => {
                if !is_model_name(&request.name) {
                    return Err(format!("model name '{}' must be 1-64 characters of a-z, 0-9, '-' and '_'", request.name));
                }
                if request.epochs == 0 || request.batch_size == 0 || request.width == 0 {
                    return Err("epochs, batch_size and width must be at least 1".into());
                }
                Ok(())
            }
        }
    }

    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unlearn(_) => "unlearn",
            Self::Sweep(_) => "sweep",
            Self::Eval(_) => "eval",
            Self::Train(_) => "train",
        }
    }

    /// The model the run reads, if any.
    pub fn model(&self) -> Option<&str> {
        match self {
            Self::Unlearn(r) | Self::Sweep(r) => Some(&r.model),
            Self::Eval(r) => Some(&r.model),
            Self::Train(_) => None,
        }
    }
}

/// Names the server accepts for models: safe as file names and in URLs.
pub fn is_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The server stopped while the run was queued or running; submit it again.
    Interrupted,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled, Self::Interrupted]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// One epoch of training, as the trainer logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// A model on the test set, with no class singled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EvalSummary {
    pub model: String,
    pub device: String,
    pub overall: AccLoss,
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TrainSummary {
    /// The model id the trained weights were stored under.
    pub model: String,
    pub device: String,
    pub epochs: Vec<EpochLog>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunResult {
    Unlearn(Box<UnlearnReport>),
    Sweep { reports: Vec<UnlearnReport> },
    Eval(EvalSummary),
    Train(TrainSummary),
}

impl RunResult {
    /// The unlearning reports it holds, for the seed-style table.
    pub fn reports(&self) -> &[UnlearnReport] {
        match self {
            Self::Unlearn(report) => std::slice::from_ref(report),
            Self::Sweep { reports } => reports,
            Self::Eval(_) | Self::Train(_) => &[],
        }
    }
}

/// A run as `GET /api/runs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Run {
    pub id: RunId,
    pub request: RunRequest,
    pub status: RunStatus,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Latest progress while it runs.
    pub progress: Option<ProgressEvent>,
    /// Left out of history listings.
    pub result: Option<RunResult>,
    pub error: Option<String>,
    /// Whether `GET /api/runs/{id}/weights` has an unlearned model.
    pub has_weights: bool,
}

/// `GET /api/runs`: newest first; pass `next_before` as `before` for the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunPage {
    pub runs: Vec<Run>,
    pub next_before: Option<RunId>,
}

/// `POST /api/runs`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunAccepted {
    pub id: RunId,
    pub status: RunStatus,
    /// An identical run already finished (or is under way); this is that run.
    pub reused: bool,
}

/// What `GET /api/runs/{id}/events` streams; each is one Server-Sent Event whose `event`
/// field is the variant's name and whose `data` is its JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunEvent {
    Status(RunStatus),
    Progress(ProgressEvent),
    /// The last event: the finished run with its result.
    Done(Box<Run>),
}

impl RunEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Progress(_) => "progress",
            Self::Done(_) => "done",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_name_or_number() {
        let parse = |json: &str| serde_json::from_str::<ClassId>(json);
        assert_eq!(parse("5").unwrap().index(), 5);
        assert_eq!(parse("\"dog\"").unwrap().index(), 5);
        assert!(parse("10").unwrap_err().to_string().contains("unknown class 10"));
        assert!(parse("\"zebra\"").unwrap_err().to_string().contains("unknown class 'zebra'"));
        assert_eq!(serde_json::to_string(&ClassId::new(3).unwrap()).unwrap(), "3");
    }

    #[test]
    fn requests_fill_in_the_default_settings_and_reject_unknown_fields() {
        let request: RunRequest = serde_json::from_str(r#"{"kind":"unlearn","class":"cat"}"#).unwrap();
        let RunRequest::Unlearn(unlearn) = &request else { panic!("{request:?}") };
        assert_eq!((unlearn.model.as_str(), unlearn.settings()), ("base", SsdSettings::default()));
        assert!(request.validate().is_ok());
        let seed: RunRequest = serde_json::from_str(r#"{"kind":"sweep","alpha":10,"lambda":1,"layers":"all"}"#).unwrap();
        let RunRequest::Sweep(seed) = seed else { panic!("{seed:?}") };
        assert_eq!(seed.settings(), SsdSettings::seed(), "the seed card's SSD in three fields");

        let error = serde_json::from_str::<RunRequest>(r#"{"kind":"unlearn","class":3,"alpa":2}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `alpa`"), "{error}");
        assert!(serde_json::from_str::<RunRequest>(r#"{"kind":"forget"}"#).is_err());
    }

    #[test]
    fn validation_explains_itself() {
        let unlearn = |json: &str| serde_json::from_str::<RunRequest>(json).unwrap().validate();
        assert!(unlearn(r#"{"kind":"unlearn"}"#).unwrap_err().contains("needs a `class`"));
        assert!(unlearn(r#"{"kind":"sweep","class":1}"#).unwrap_err().contains("leave out `class`"));
        assert!(unlearn(r#"{"kind":"sweep","alpha":-1}"#).unwrap_err().contains("alpha"));
        assert!(unlearn(r#"{"kind":"train","name":"../x"}"#).unwrap_err().contains("model name"));
        assert!(unlearn(r#"{"kind":"train","name":"tiny","epochs":1}"#).is_ok());
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in [RunStatus::Queued, RunStatus::Running, RunStatus::Succeeded, RunStatus::Failed, RunStatus::Cancelled, RunStatus::Interrupted] {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(RunStatus::parse("done"), None);
    }
}
