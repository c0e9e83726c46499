//! Model files: safetensors in torchvision layout, with the workbench's metadata and, in a
//! training checkpoint, the optimizer's momentum under `optimizer.momentum.<key>`.
//!
//! A model is one `.safetensors` file, or a folder of shards with a Hugging Face-style
//! `model.safetensors.index.json` (how the repository ships its models: git hosts refuse big
//! files, and f16 halves the size).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use unlearn_shared::api::{EpochLog, TrainRecipe};
use unlearn_shared::model::weights::{self, Metadata, Precision, StateDict, WeightsError};
use unlearn_shared::model::ResNetConfig;

use super::files::{sha256_hex, write_atomic};

const META_KEY: &str = "workbench";
const OPTIMIZER_PREFIX: &str = "optimizer.momentum.";
/// The index of a sharded model, named as Hugging Face names it.
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// What the workbench records about a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ModelMeta {
    /// Where the weights came from, in words.
    pub(crate) provenance: String,
    pub(crate) test_accuracy: Option<f64>,
    /// Present in files written by the trainer; what a resumed training continues from.
    pub(crate) training: Option<TrainingRecord>,
}

/// How a model was trained, and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainingRecord {
    pub(crate) recipe: TrainRecipe,
    pub(crate) log: Vec<EpochLog>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Weights { path: PathBuf, source: WeightsError },
    #[error("{path}: unreadable workbench metadata: {source}")]
    Meta { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {problem}")]
    Index { path: PathBuf, problem: String },
}

/// How a model is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One f32 file: the workbench's own models and training checkpoints.
    File,
    /// A folder of shards of at most `max_shard_bytes` each, with an index.
    Sharded { precision: Precision, max_shard_bytes: usize },
}

#[derive(Serialize, Deserialize)]
struct ShardIndex {
    metadata: IndexMetadata,
    /// Tensor key to the shard (a file in the same folder) that holds it.
    weight_map: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct IndexMetadata {
    /// Bytes of tensor data in all shards, as Hugging Face's indexes give it.
    total_size: u64,
    /// The workbench's metadata, as a single file holds it in its header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workbench: Option<ModelMeta>,
    /// sha256 of each shard, checked when the model is read.
    #[serde(default)]
    sha256: BTreeMap<String, String>,
}

pub(crate) struct ModelFile {
    pub(crate) meta: ModelMeta,
    pub(crate) weights: StateDict,
    /// SGD momentum by parameter key; empty outside training checkpoints.
    pub(crate) optimizer: StateDict,
}

impl ModelFile {
    /// Loads the weights into the model on the CPU: what makes a file a usable model.
    /// Returns its shape and parameter count.
    pub(crate) fn check(&self) -> Result<(ResNetConfig, usize), WeightsError> {
        let model = weights::model_from_state_dict::<burn::backend::Flex>(self.weights.clone(), &Default::default())?;
        Ok((model.config(), weights::parameter_count(&model)))
    }

    /// The weights alone in half precision: what the browser downloads.
    pub(crate) fn browser_weights(&self) -> Vec<u8> {
        weights::encode(&self.weights, Metadata::new(), Precision::Half)
    }

    /// Identifies the weights (not the metadata or optimizer): keys caches of derived results.
    pub(crate) fn digest(&self) -> String {
        sha256_hex(&weights::encode(&self.weights, Metadata::new(), Precision::F32))
    }

    /// Reads a model file, or a sharded model's folder.
    pub(crate) fn read(path: &Path) -> Result<Self, ModelFileError> {
        if path.is_dir() {
            return Self::read_sharded(path);
        }
        let bytes = std::fs::read(path).map_err(|source| ModelFileError::Io { path: path.to_owned(), source })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses a single file's contents; `origin` names it in errors and in default provenance.
    pub(crate) fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self, ModelFileError> {
        let (tensors, metadata) = weights::decode(bytes).map_err(|source| ModelFileError::Weights { path: origin.to_owned(), source })?;
        let meta = match metadata.get(META_KEY) {
            Some(json) => serde_json::from_str(json).map_err(|source| ModelFileError::Meta { path: origin.to_owned(), source })?,
            None => ModelMeta { provenance: format!("loaded from {}", file_name(origin)), ..Default::default() },
        };
        Ok(Self::split(tensors, meta))
    }

    fn split(tensors: StateDict, meta: ModelMeta) -> Self {
        let (optimizer, weights): (StateDict, StateDict) = tensors.into_iter().partition(|(key, _)| key.starts_with(OPTIMIZER_PREFIX));
        let optimizer = optimizer.into_iter().map(|(key, t)| (key[OPTIMIZER_PREFIX.len()..].to_owned(), t)).collect();
        Self { meta, weights, optimizer }
    }

    fn read_sharded(dir: &Path) -> Result<Self, ModelFileError> {
        let index_path = dir.join(INDEX_FILE);
        let index_error = |problem: String| ModelFileError::Index { path: index_path.clone(), problem };
        let text = std::fs::read_to_string(&index_path).map_err(|source| ModelFileError::Io { path: index_path.clone(), source })?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|e| index_error(format!("not a shard index: {e}")))?;
        let mut tensors = StateDict::new();
        let shards: std::collections::BTreeSet<&String> = index.weight_map.values().collect();
        for shard in shards {
            if Path::new(shard).file_name() != Some(std::ffi::OsStr::new(shard)) {
                return Err(index_error(format!("shard '{shard}' is not a file name in the model's folder")));
            }
            let path = dir.join(shard);
            let bytes = std::fs::read(&path).map_err(|source| ModelFileError::Io { path: path.clone(), source })?;
            if let Some(expected) = index.metadata.sha256.get(shard) {
                let found = sha256_hex(&bytes);
                if &found != expected {
                    return Err(ModelFileError::Index { path, problem: format!("sha256 is {found}, the index says {expected}: the file is damaged") });
                }
            }
            let (shard_tensors, _) = weights::decode(&bytes).map_err(|source| ModelFileError::Weights { path: path.clone(), source })?;
            for (key, tensor) in shard_tensors {
                if index.weight_map.get(&key) != Some(shard) {
                    return Err(ModelFileError::Index { path: path.clone(), problem: format!("holds '{key}', which the index places elsewhere") });
                }
                tensors.insert(key, tensor);
            }
        }
        let ignored = |key: &str| key.ends_with(".num_batches_tracked");
        if let Some(missing) = index.weight_map.keys().find(|key| !tensors.contains_key(*key) && !ignored(key)) {
            return Err(index_error(format!("'{missing}' is in no shard")));
        }
        let meta = index.metadata.workbench.unwrap_or_else(|| ModelMeta { provenance: format!("loaded from {}", file_name(dir)), ..Default::default() });
        Ok(Self::split(tensors, meta))
    }

    fn tensors(&self) -> StateDict {
        let mut tensors = self.weights.clone();
        tensors.extend(self.optimizer.iter().map(|(key, t)| (format!("{OPTIMIZER_PREFIX}{key}"), t.clone())));
        tensors
    }

    /// The contents of a single f32 file (`Layout::File`).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let meta = serde_json::to_string(&self.meta).expect("metadata serialises");
        weights::encode(&self.tensors(), Metadata::from([(META_KEY.to_owned(), meta)]), Precision::F32)
    }

    pub(crate) fn write(&self, path: &Path, layout: Layout) -> Result<(), ModelFileError> {
        fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelFileError + '_ {
            move |source| ModelFileError::Io { path: path.to_owned(), source }
        }
        match layout {
            Layout::File => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                write_atomic(path, &self.to_bytes()).map_err(io(path))
            }
            Layout::Sharded { precision, max_shard_bytes } => {
                std::fs::create_dir_all(path).map_err(io(path))?;
                let groups = shard_groups(&self.tensors(), precision, max_shard_bytes);
                let mut index = ShardIndex {
                    metadata: IndexMetadata { total_size: 0, workbench: Some(self.meta.clone()), sha256: BTreeMap::new() },
                    weight_map: BTreeMap::new(),
                };
                for (n, group) in groups.iter().enumerate() {
                    let name = format!("model-{:05}-of-{:05}.safetensors", n + 1, groups.len());
                    let bytes = weights::encode(group, Metadata::new(), precision);
                    index.metadata.total_size += group.iter().map(|(key, t)| (t.values.len() * bytes_per_value(precision, key)) as u64).sum::<u64>();
                    index.metadata.sha256.insert(name.clone(), sha256_hex(&bytes));
                    index.weight_map.extend(group.keys().map(|key| (key.clone(), name.clone())));
                    write_atomic(&path.join(&name), &bytes).map_err(io(&path.join(&name)))?;
                }
                let text = serde_json::to_string_pretty(&index).expect("index serialises") + "\n";
                write_atomic(&path.join(INDEX_FILE), text.as_bytes()).map_err(io(&path.join(INDEX_FILE)))
            }
        }
    }
}

/// The per-epoch log kept beside a training checkpoint: `<checkpoint>.log.jsonl`.
pub(crate) fn training_log_path(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.file_name().unwrap_or_default().to_owned();
    name.push(".log.jsonl");
    checkpoint.with_file_name(name)
}

/// Writes the log of every epoch so far, one JSON object a line.
pub(crate) fn write_training_log(checkpoint: &Path, log: &[EpochLog]) -> Result<(), ModelFileError> {
    let path = training_log_path(checkpoint);
    let lines: String = log.iter().map(|entry| serde_json::to_string(entry).expect("log serialises") + "\n").collect();
    write_atomic(&path, lines.as_bytes()).map_err(|source| ModelFileError::Io { path, source })
}

fn bytes_per_value(precision: Precision, key: &str) -> usize {
    match precision {
        Precision::Half if !weights::is_statistic(key) => 2,
        _ => 4,
    }
}

/// Tensors in key order, cut into groups whose data stays under `max_bytes` (a tensor
/// larger than that gets a group of its own).
fn shard_groups(tensors: &StateDict, precision: Precision, max_bytes: usize) -> Vec<StateDict> {
    let mut groups = vec![StateDict::new()];
    let mut size = 0;
    for (key, tensor) in tensors {
        let bytes = tensor.values.len() * bytes_per_value(precision, key);
        if size + bytes > max_bytes && size > 0 {
            groups.push(StateDict::new());
            size = 0;
        }
        size += bytes;
        groups.last_mut().expect("never empty").insert(key.clone(), tensor.clone());
    }
    groups
}

/// A path's last part: enough to name a file in provenance without revealing where it is.
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use unlearn_shared::model::weights::export;

    use super::*;

    fn tiny() -> ModelFile {
        let model = ResNetConfig::new().with_width(4).init::<burn::backend::Flex>(&Default::default());
        ModelFile {
            meta: ModelMeta { provenance: "tiny".into(), test_accuracy: Some(10.0), training: None },
            weights: export(&model),
            optimizer: StateDict::new(),
        }
    }

    #[test]
    fn sharded_models_round_trip_and_name_a_damaged_shard() {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny();
        let folder = dir.path().join("tiny");
        model.write(&folder, Layout::Sharded { precision: Precision::Half, max_shard_bytes: 40_000 }).unwrap();
        let shards: Vec<_> = std::fs::read_dir(&folder).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name() != INDEX_FILE).collect();
        assert!(shards.len() >= 2, "{} shards", shards.len());
        assert!(shards.iter().all(|s| s.metadata().unwrap().len() < 45_000), "every shard under the limit, plus its header");

        let back = ModelFile::read(&folder).unwrap();
        assert_eq!(back.meta, model.meta);
        assert_eq!(back.weights.keys().collect::<Vec<_>>(), model.weights.keys().collect::<Vec<_>>());
        for (key, tensor) in &model.weights {
            if weights::is_statistic(key) {
                assert_eq!(back.weights[key], *tensor, "{key} stays f32");
            } else {
                let worst = tensor.values.iter().zip(&back.weights[key].values).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst <= 1e-3, "{key}: {worst}");
            }
        }
        back.check().unwrap();

        // One flipped byte in a shard: the error names the shard.
        let shard = shards[0].path();
        let mut bytes = std::fs::read(&shard).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&shard, bytes).unwrap();
        let error = ModelFile::read(&folder).err().unwrap().to_string();
        assert!(error.contains(&shard.display().to_string()) && error.contains("damaged"), "{error}");
    }

    #[test]
    fn single_files_keep_metadata_and_momentum() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = tiny();
        model.optimizer.insert("fc.bias".into(), model.weights["fc.bias"].clone());
        let path = dir.path().join("nested/tiny.safetensors");
        model.write(&path, Layout::File).unwrap();
        let back = ModelFile::read(&path).unwrap();
        assert_eq!((back.meta, back.weights, back.optimizer), (model.meta, model.weights, model.optimizer));
        let error = ModelFile::from_bytes(b"not a model", Path::new("upload")).err().unwrap().to_string();
        assert!(error.starts_with("upload: not a safetensors file"), "{error}");
    }
}
