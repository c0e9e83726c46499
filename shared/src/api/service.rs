//! The HTTP API's answers that are not runs: the server, its models, its sample images and
//! its errors.

use serde::{Deserialize, Serialize};

use super::Subsample;

/// `GET /api/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Health {
    pub version: String,
    /// The backend the worker runs on (`cuda`, `cpu`, or `wgpu` with its adapter:
    /// `wgpu (NVIDIA H200)`); `None` while it starts.
    pub device: Option<String>,
    /// Runs waiting for the worker, not counting the one it is running.
    pub queue_length: usize,
    pub queue_capacity: usize,
    /// Whether the server runs in `--public` mode (rate limits, token-protected writes).
    pub public: bool,
    /// What a visitor without the token may do, in `--public` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_limits: Option<PublicLimits>,
}

/// What a visitor of a `--public` server may do without the token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PublicLimits {
    /// API requests per minute (the page's files, thumbnails and downloads have their own).
    pub api_requests_per_minute: u32,
    /// Runs one visitor may have queued or running at once.
    pub runs_at_once: usize,
    /// The most images a run of the whole model may use (an evaluation, or unlearning past
    /// the classifier); `None` while the worker starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsample: Option<Subsample>,
    /// The most images a classifier-scope run (the default preset) on a model whose features
    /// are cached may use: usually whole sets; `None` while the worker starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_subsample: Option<Subsample>,
}

/// A base model the server can unlearn from (`GET /api/models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModelInfo {
    /// The file's name without `.safetensors`; what requests name.
    pub id: String,
    pub provenance: String,
    pub test_accuracy: Option<f64>,
    pub width: usize,
    pub parameters: usize,
    /// sha256 of the weights alone, so that a changed file gives a new digest.
    pub digest: String,
}

/// A test image for the gallery (`GET /api/samples`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Sample {
    /// Index in the CIFAR-10 test set.
    pub index: usize,
    pub label: usize,
    pub class: String,
    /// Where its 32x32 PNG is served.
    pub url: String,
}

/// Every error answer's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    /// A short, stable description, for example "unknown model".
    pub error: String,
    /// What exactly was wrong, for a person to read.
    pub detail: String,
}
