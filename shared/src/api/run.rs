//! A run as clients see it: its status, its live progress, its result, and the event
//! stream that follows it.

use serde::{Deserialize, Serialize};

use super::report::{AccLoss, UnlearnReport};
use super::request::RunRequest;
use super::training::EpochLog;

pub type RunId = i64;

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
        [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled, Self::Interrupted].into_iter().find(|status| status.as_str() == text)
    }
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
    /// The whole run's progress, where the run knows the phases ahead of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall: Option<Overall>,
}

/// How far a whole run (every phase, every class of a sweep) has come.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Overall {
    /// 0 to 1, by the estimated cost of the phases done and ahead.
    pub fraction: f64,
    pub elapsed_s: f64,
    /// Unknown until the run has made some progress.
    pub eta_s: Option<f64>,
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
    /// The figures a history row shows.
    pub fn headline(&self) -> Headline {
        let reports = self.reports();
        let mean = |value: fn(&UnlearnReport) -> f64| (!reports.is_empty()).then(|| reports.iter().map(value).sum::<f64>() / reports.len() as f64);
        let accuracy = match self {
            Self::Eval(summary) => Some(summary.overall.accuracy),
            Self::Train(summary) => summary.epochs.last().map(|epoch| epoch.test_accuracy),
            Self::Unlearn(_) | Self::Sweep { .. } => mean(|r| r.after.test.split.retain.accuracy),
        };
        Headline {
            forget_accuracy: mean(|r| r.after.test.split.forget.accuracy),
            accuracy,
            retain_drop: reports.iter().map(UnlearnReport::retain_drop).reduce(f64::max),
            classes: reports.len(),
        }
    }

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
    /// The result's headline figures; in history listings too, which leave the result out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<Headline>,
}

/// What a history row shows of a finished run without loading its result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Headline {
    /// Percent of the forget class's test images the unlearned model(s) still recognise; for
    /// a sweep, the mean over its classes.
    pub forget_accuracy: Option<f64>,
    /// Percent of the retained classes' test images classified correctly after unlearning
    /// (a sweep's mean), or the evaluated or trained model's test accuracy.
    pub accuracy: Option<f64>,
    /// Retain accuracy lost to unlearning, in points (a sweep's worst class).
    pub retain_drop: Option<f64>,
    /// Classes forgotten: 1, or as many as a sweep finished.
    pub classes: usize,
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
    fn statuses_round_trip_through_text() {
        for status in [RunStatus::Queued, RunStatus::Running, RunStatus::Succeeded, RunStatus::Failed, RunStatus::Cancelled, RunStatus::Interrupted] {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(RunStatus::parse("done"), None);
    }
}
