//! Model files: safetensors in torchvision layout, with the workbench's metadata and, in a
//! training checkpoint, the optimizer's momentum under `optimizer.momentum.<key>`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use unlearn_shared::model::weights::{self, Metadata, Precision, StateDict, WeightsError};
use unlearn_shared::model::ResNetConfig;

use crate::engine::train::TrainState;
use crate::files::{sha256_hex, write_atomic};

const META_KEY: &str = "workbench";
const OPTIMIZER_PREFIX: &str = "optimizer.momentum.";

/// What the workbench records about a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Where the weights came from, in words.
    pub provenance: String,
    pub test_accuracy: Option<f64>,
    /// Present in files written by the trainer; what `--resume` continues from.
    pub training: Option<TrainState>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Weights { path: PathBuf, error: WeightsError },
    #[error("{path}: unreadable workbench metadata: {problem}")]
    Meta { path: PathBuf, problem: String },
}

pub struct ModelFile {
    pub meta: ModelMeta,
    pub weights: StateDict,
    /// SGD momentum by parameter key; empty outside training checkpoints.
    pub optimizer: StateDict,
}

impl ModelFile {
    /// Loads the weights into the model on the CPU: what makes a file a usable model.
    /// Returns its shape and parameter count.
    pub fn check(&self) -> Result<(ResNetConfig, usize), WeightsError> {
        let model = weights::model_from_state_dict::<crate::device::CpuBackend>(self.weights.clone(), &Default::default())?;
        Ok((model.config(), weights::parameter_count(&model)))
    }

    /// The weights alone in half precision: what the browser downloads.
    pub fn browser_weights(&self) -> Vec<u8> {
        weights::encode(&self.weights, Metadata::new(), Precision::F16)
    }

    /// Identifies the weights (not the metadata or optimizer): keys caches of derived results.
    pub fn digest(&self) -> String {
        sha256_hex(&weights::encode(&self.weights, Metadata::new(), Precision::F32))
    }

    pub fn read(path: &Path) -> Result<Self, ModelFileError> {
        let bytes = std::fs::read(path).map_err(|error| ModelFileError::Io { path: path.to_owned(), error })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a file's contents; `origin` names it in errors and in default provenance.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self, ModelFileError> {
        let (tensors, metadata) =
            weights::decode(bytes).map_err(|error| ModelFileError::Weights { path: origin.to_owned(), error })?;
        let meta = match metadata.get(META_KEY) {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| ModelFileError::Meta { path: origin.to_owned(), problem: e.to_string() })?,
            None => ModelMeta { provenance: format!("loaded from {}", origin.display()), ..Default::default() },
        };
        let (optimizer, weights): (StateDict, StateDict) = tensors.into_iter().partition(|(key, _)| key.starts_with(OPTIMIZER_PREFIX));
        let optimizer = optimizer.into_iter().map(|(key, t)| (key[OPTIMIZER_PREFIX.len()..].to_owned(), t)).collect();
        Ok(Self { meta, weights, optimizer })
    }

    pub fn write(&self, path: &Path) -> Result<(), ModelFileError> {
        let mut tensors = self.weights.clone();
        tensors.extend(self.optimizer.iter().map(|(key, t)| (format!("{OPTIMIZER_PREFIX}{key}"), t.clone())));
        let meta = serde_json::to_string(&self.meta).expect("metadata serialises");
        let bytes = weights::encode(&tensors, Metadata::from([(META_KEY.to_owned(), meta)]), Precision::F32);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| ModelFileError::Io { path: dir.to_owned(), error })?;
        }
        write_atomic(path, &bytes).map_err(|error| ModelFileError::Io { path: path.to_owned(), error })
    }
}
