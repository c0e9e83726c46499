//! The models the workbench can unlearn from, by id: the user's own (`<data-dir>/models`,
//! imported or trained here) and the ones the repository ships (`models/`, read-only).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use unlearn_shared::api::{is_model_name, ModelInfo};

use super::files::{remove_partials, sha256_hex, write_new};
use super::model_file::{ModelFile, ModelFileError, ModelMeta, INDEX_FILE};

pub(crate) struct ModelStore {
    /// Where imported and trained models go.
    user_dir: PathBuf,
    entries: RwLock<BTreeMap<String, Arc<StoredModel>>>,
    /// Files of the user's folder that are not usable models, by path, size and time, so
    /// that each version of one is read once.
    unusable: Mutex<BTreeSet<(PathBuf, u64, Option<std::time::SystemTime>)>>,
    /// When the user's folder was last looked through for models other processes added.
    discovered: Mutex<Option<std::time::Instant>>,
}

/// How often a lookup may read the user's folder again (a request for an unknown id reads it).
const DISCOVER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A model the store found and checked.
pub(crate) struct StoredModel {
    pub(crate) info: ModelInfo,
    pub(crate) path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelStoreError {
    #[error("there is no model '{0}'")]
    Unknown(String),
    #[error("model name '{0}' must be 1-64 characters of a-z, 0-9, '-' and '_'")]
    Name(String),
    #[error("a model named '{0}' already exists")]
    Exists(String),
    #[error("{0} is not a ResNet18 checkpoint this workbench can use: {1}")]
    NotAModel(String, String),
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl ModelStore {
    /// Reads every model in both folders; files that are not usable models are logged and
    /// skipped, so one bad file does not keep the workbench from starting. A user model with
    /// a shipped model's id is skipped too.
    pub(crate) fn open(user_dir: &Path, shipped_dir: &Path) -> Result<Self, ModelStoreError> {
        std::fs::create_dir_all(user_dir).map_err(|source| ModelStoreError::Io { path: user_dir.to_owned(), source })?;
        remove_partials(user_dir);
        let mut entries = BTreeMap::new();
        if shipped_dir.is_dir() {
            scan(shipped_dir, &mut entries)?;
        } else {
            tracing::warn!(folder = %shipped_dir.display(), "the shipped models' folder is missing; run from the repository's root or pass --shipped-models");
        }
        scan(user_dir, &mut entries)?;
        let discovered = Mutex::new(Some(std::time::Instant::now()));
        Ok(Self { user_dir: user_dir.to_owned(), entries: RwLock::new(entries), unusable: Mutex::default(), discovered })
    }

    pub(crate) fn list(&self) -> Vec<ModelInfo> {
        self.discover();
        self.entries.read().expect("store lock").values().map(|e| e.info.clone()).collect()
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<StoredModel>> {
        self.known(id).or_else(|| {
            self.discover();
            self.known(id)
        })
    }

    fn known(&self, id: &str) -> Option<Arc<StoredModel>> {
        self.entries.read().expect("store lock").get(id).cloned()
    }

    /// Adds the models that appeared in the user's folder since it was read: another process
    /// sharing the data folder (an API server or a worker) imported or trained them.
    fn discover(&self) {
        {
            let mut discovered = self.discovered.lock().expect("store lock");
            if discovered.is_some_and(|at| at.elapsed() < DISCOVER_EVERY) {
                return;
            }
            *discovered = Some(std::time::Instant::now());
        }
        let Ok(listing) = std::fs::read_dir(&self.user_dir) else { return };
        for path in listing.filter_map(|e| e.ok()).map(|e| e.path()) {
            let Some(id) = model_id(&path) else { continue };
            let version = std::fs::metadata(&path).map_or((path.clone(), 0, None), |m| (path.clone(), m.len(), m.modified().ok()));
            if self.known(&id).is_some() || self.unusable.lock().expect("store lock").contains(&version) {
                continue;
            }
            match load(&path, &id) {
                Ok(entry) => {
                    self.entries.write().expect("store lock").entry(id).or_insert_with(|| Arc::new(entry));
                }
                Err(error) => {
                    tracing::warn!(model = %path.display(), %error, "skipped a file that is not a usable model");
                    self.unusable.lock().expect("store lock").insert(version);
                }
            }
        }
    }

    pub(crate) fn read(&self, id: &str) -> Result<ModelFile, ModelStoreError> {
        let entry = self.get(id).ok_or_else(|| ModelStoreError::Unknown(id.to_owned()))?;
        Ok(ModelFile::read(&entry.path)?)
    }

    /// Whether `id` is taken, by a model or by a file that is not one.
    pub(crate) fn is_taken(&self, id: &str) -> bool {
        self.known(id).is_some() || self.user_path(id).exists() || self.user_dir.join(id).join(INDEX_FILE).exists()
    }

    /// Where the user's model `id` is (or would be) stored.
    pub(crate) fn user_path(&self, id: &str) -> PathBuf {
        self.user_dir.join(format!("{id}.safetensors"))
    }

    /// Makes a model file outside the store usable by its file name, for the command line.
    pub(crate) fn add_external(&self, path: &Path) -> Result<String, ModelStoreError> {
        let id = file_id(path);
        let entry = load(path, &id)?;
        self.entries.write().expect("store lock").insert(id.clone(), Arc::new(entry));
        Ok(id)
    }

    /// Stores an uploaded checkpoint as the user's model `id`, once it has loaded into ResNet18.
    pub(crate) fn import(&self, id: &str, bytes: &[u8]) -> Result<ModelInfo, ModelStoreError> {
        if !is_model_name(id) {
            return Err(ModelStoreError::Name(id.to_owned()));
        }
        if self.is_taken(id) {
            return Err(ModelStoreError::Exists(id.to_owned()));
        }
        let upload = ModelFile::from_bytes(bytes, Path::new("the upload"))?;
        let model = imported(upload, &format!("uploaded as '{id}'"), bytes)?;
        let path = self.user_path(id);
        let encoded = model.to_bytes();
        write_new(&path, &encoded).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => ModelStoreError::Exists(id.to_owned()),
            _ => ModelStoreError::Io { path: path.clone(), source },
        })?;
        self.refresh(id, &path)
    }

    /// Moves a model trained elsewhere (a run's folder) into the store as `id`.
    pub(crate) fn publish(&self, id: &str, trained: &Path) -> Result<ModelInfo, ModelStoreError> {
        if self.is_taken(id) {
            return Err(ModelStoreError::Exists(id.to_owned()));
        }
        let path = self.user_path(id);
        std::fs::hard_link(trained, &path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => ModelStoreError::Exists(id.to_owned()),
            _ => ModelStoreError::Io { path: path.clone(), source },
        })?;
        let _ = std::fs::remove_file(trained);
        self.refresh(id, &path)
    }

    fn refresh(&self, id: &str, path: &Path) -> Result<ModelInfo, ModelStoreError> {
        let entry = load(path, id)?;
        let info = entry.info.clone();
        self.entries.write().expect("store lock").insert(id.to_owned(), Arc::new(entry));
        Ok(info)
    }
}

/// A foreign checkpoint, checked, with the workbench's metadata: `source` says in words where
/// it came from, and `bytes` are its contents, whose digest the provenance records. An
/// accuracy in its metadata is a claim that nobody here measured: it is kept in the
/// provenance as a claim, and the model is listed without an accuracy until one is measured.
pub(crate) fn imported(file: ModelFile, source: &str, bytes: &[u8]) -> Result<ModelFile, ModelStoreError> {
    file.check().map_err(|e| ModelStoreError::NotAModel(source.to_owned(), e.to_string()))?;
    let claim = match file.meta.test_accuracy {
        Some(claimed) if (0.0..=100.0).contains(&claimed) => format!("; its metadata claims {claimed} % test accuracy, not measured here"),
        _ => String::new(),
    };
    let meta = ModelMeta { provenance: format!("{source} (sha256 {}){claim}", sha256_hex(bytes)), test_accuracy: None, training: None };
    Ok(ModelFile { meta, weights: file.weights, optimizer: Default::default() })
}

fn scan(dir: &Path, entries: &mut BTreeMap<String, Arc<StoredModel>>) -> Result<(), ModelStoreError> {
    let listing = std::fs::read_dir(dir).map_err(|source| ModelStoreError::Io { path: dir.to_owned(), source })?;
    let mut paths: Vec<PathBuf> = listing.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Some(id) = model_id(&path) else { continue };
        if entries.contains_key(&id) {
            tracing::warn!(model = %path.display(), "skipped: a shipped model has the id '{id}'");
            continue;
        }
        match load(&path, &id) {
            Ok(entry) => {
                entries.insert(id, Arc::new(entry));
            }
            Err(error) => tracing::warn!(model = %path.display(), %error, "skipped a file that is not a usable model"),
        }
    }
    Ok(())
}

/// What a model file or folder is called when it is given by path: its name, less `.safetensors`.
pub(crate) fn file_id(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// A model's id: a `.safetensors` file's stem, or a sharded model's folder name.
fn model_id(path: &Path) -> Option<String> {
    let id = if path.is_dir() {
        path.join(INDEX_FILE).is_file().then(|| path.file_name())??.to_str()?
    } else {
        (path.extension()? == "safetensors").then(|| path.file_stem())??.to_str()?
    };
    is_model_name(id).then(|| id.to_owned())
}

fn load(path: &Path, id: &str) -> Result<StoredModel, ModelStoreError> {
    let file = ModelFile::read(path)?;
    let (config, parameters) = file.check().map_err(|e| ModelStoreError::NotAModel(path.display().to_string(), e.to_string()))?;
    let info = ModelInfo {
        id: id.to_owned(),
        provenance: file.meta.provenance.clone(),
        test_accuracy: file.meta.test_accuracy,
        width: config.width,
        parameters,
        digest: file.digest(),
    };
    Ok(StoredModel { info, path: path.to_owned() })
}

#[cfg(test)]
mod tests {
    use unlearn_shared::model::{weights, ResNetConfig};

    use super::*;

    #[test]
    fn a_model_another_process_added_to_the_folder_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (user, shipped) = (dir.path().join("models"), dir.path().join("none"));
        let here = ModelStore::open(&user, &shipped).unwrap();
        let there = ModelStore::open(&user, &shipped).unwrap();
        let model = ResNetConfig::new().with_width(4).init::<burn::backend::Flex>(&Default::default());
        let bytes = ModelFile { meta: ModelMeta::default(), weights: weights::export(&model), optimizer: Default::default() }.to_bytes();
        let info = there.import("theirs", &bytes).unwrap();
        *here.discovered.lock().unwrap() = None;
        assert_eq!(here.get("theirs").map(|m| m.info.digest.clone()), Some(info.digest), "found by id");
        std::fs::write(user.join("broken.safetensors"), b"not a model").unwrap();
        let copy = ModelStore::open(&user, &shipped).unwrap();
        there.import("later", &bytes).unwrap();
        assert_eq!(copy.list().len(), 1, "the folder is read at most once a second");
        *copy.discovered.lock().unwrap() = None;
        let ids: Vec<String> = copy.list().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["later", "theirs"], "listed, and the broken file skipped");
        assert!(here.get("missing").is_none());
    }

    #[test]
    fn an_uploaded_accuracy_is_a_claim_not_a_measurement() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(&dir.path().join("models"), &dir.path().join("none")).unwrap();
        let model = ResNetConfig::new().with_width(4).init::<burn::backend::Flex>(&Default::default());
        for (id, claimed, says) in [("perfect", 100.0, Some("claims 100 % test accuracy, not measured here")), ("absurd", -1e308, None)] {
            let meta = ModelMeta { provenance: "trust me".into(), test_accuracy: Some(claimed), training: None };
            let bytes = ModelFile { meta, weights: weights::export(&model), optimizer: Default::default() }.to_bytes();
            let info = store.import(id, &bytes).unwrap();
            assert_eq!(info.test_accuracy, None, "{info:?}");
            assert_eq!(store.list().iter().find(|m| m.id == id).unwrap().test_accuracy, None);
            match says {
                Some(text) => assert!(info.provenance.contains(text), "{}", info.provenance),
                None => assert!(!info.provenance.contains("claims"), "{}", info.provenance),
            }
        }
    }
}
