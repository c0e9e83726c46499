//! The base models the server offers: every valid `*.safetensors` in the models folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use unlearn_shared::api::{is_model_name, ModelInfo};

use crate::files::sha256_hex;
use crate::models::{ModelFile, ModelMeta};

pub struct Catalog {
    dir: PathBuf,
    entries: RwLock<BTreeMap<String, Arc<CatalogEntry>>>,
}

pub struct CatalogEntry {
    pub info: ModelInfo,
    pub path: PathBuf,
    browser: OnceLock<Arc<Download>>,
}

/// A file served over HTTP with an ETag.
pub struct Download {
    pub bytes: axum::body::Bytes,
    pub etag: String,
}

impl Download {
    pub fn new(bytes: Vec<u8>) -> Self {
        let etag = format!("\"{}\"", &sha256_hex(&bytes)[..32]);
        Self { bytes: bytes.into(), etag }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("model name '{0}' must be 1-64 characters of a-z, 0-9, '-' and '_'")]
    Name(String),
    #[error("a model named '{0}' already exists")]
    Exists(String),
    #[error("{0}")]
    NotAModel(String),
    #[error("storing the model: {0}")]
    Write(String),
}

impl Catalog {
    /// Reads every model in `dir`; files that are not usable models are reported and skipped,
    /// so one bad file does not keep the server from starting.
    pub fn scan(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut entries = BTreeMap::new();
        for path in std::fs::read_dir(dir)?.filter_map(|e| e.ok()).map(|e| e.path()) {
            let Some(id) = model_id(&path) else { continue };
            match load(&path, &id) {
                Ok(entry) => {
                    entries.insert(id, Arc::new(entry));
                }
                Err(why) => eprintln!("skipping model {}: {why}", path.display()),
            }
        }
        Ok(Self { dir: dir.to_owned(), entries: RwLock::new(entries) })
    }

    pub fn list(&self) -> Vec<ModelInfo> {
        self.entries.read().expect("catalog lock").values().map(|e| e.info.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<CatalogEntry>> {
        self.entries.read().expect("catalog lock").get(id).cloned()
    }

    pub fn path_for(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.safetensors"))
    }

    /// Adds (or refreshes) the model stored at `path_for(id)`.
    pub fn refresh(&self, id: &str) -> Result<ModelInfo, String> {
        let entry = load(&self.path_for(id), id)?;
        let info = entry.info.clone();
        self.entries.write().expect("catalog lock").insert(id.to_owned(), Arc::new(entry));
        Ok(info)
    }

    /// Stores an uploaded checkpoint as model `id` once it has loaded into ResNet18.
    pub fn import(&self, id: &str, bytes: &[u8]) -> Result<ModelInfo, ImportError> {
        if !is_model_name(id) {
            return Err(ImportError::Name(id.to_owned()));
        }
        let path = self.path_for(id);
        if self.get(id).is_some() || path.exists() {
            return Err(ImportError::Exists(id.to_owned()));
        }
        let upload = ModelFile::from_bytes(bytes, Path::new("the upload")).map_err(|e| ImportError::NotAModel(e.to_string()))?;
        upload.check().map_err(|e| ImportError::NotAModel(format!("the upload is not a ResNet18 this workbench can use: {e}")))?;
        let meta = ModelMeta {
            provenance: format!("uploaded as '{id}' (sha256 {})", sha256_hex(bytes)),
            test_accuracy: upload.meta.test_accuracy,
            training: None,
        };
        ModelFile { meta, weights: upload.weights, optimizer: Default::default() }
            .write(&path)
            .map_err(|e| ImportError::Write(e.to_string()))?;
        self.refresh(id).map_err(ImportError::Write)
    }
}

impl CatalogEntry {
    /// The half-precision weights for the browser, made on first request.
    pub fn browser_weights(&self) -> Result<Arc<Download>, String> {
        if let Some(download) = self.browser.get() {
            return Ok(download.clone());
        }
        let file = ModelFile::read(&self.path).map_err(|e| e.to_string())?;
        Ok(self.browser.get_or_init(|| Arc::new(Download::new(file.browser_weights()))).clone())
    }
}

fn model_id(path: &Path) -> Option<String> {
    if path.extension()? != "safetensors" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    is_model_name(stem).then(|| stem.to_owned())
}

fn load(path: &Path, id: &str) -> Result<CatalogEntry, String> {
    let file = ModelFile::read(path).map_err(|e| e.to_string())?;
    let (config, parameters) = file.check().map_err(|e| format!("{}: {e}", path.display()))?;
    let info = ModelInfo {
        id: id.to_owned(),
        provenance: file.meta.provenance.clone(),
        test_accuracy: file.meta.test_accuracy,
        width: config.width,
        parameters,
        digest: file.digest(),
    };
    Ok(CatalogEntry { info, path: path.to_owned(), browser: OnceLock::new() })
}
