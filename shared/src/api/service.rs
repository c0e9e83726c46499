//! The HTTP API's answers that are not runs: the server, its models, its sample images and
//! its errors.

use serde::{Deserialize, Serialize};

/// `GET /api/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Health {
    pub version: String,
    /// The backend the worker runs on (`cuda`, `wgpu`, `cpu`); `None` while it starts.
    pub device: Option<String>,
    /// Runs waiting for the worker, not counting the one it is running.
    pub queue_length: usize,
    pub queue_capacity: usize,
    /// Whether the server runs in `--public` mode (rate limits, token-protected writes).
    pub public: bool,
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
