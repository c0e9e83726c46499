//! The models as the browser downloads them: half-precision copies with an ETag, made once
//! per model version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::storage::files::sha256_hex;
use crate::storage::model_store::{ModelStore, ModelStoreError};

/// A file served over HTTP with an ETag.
pub(crate) struct Download {
    pub(crate) bytes: axum::body::Bytes,
    pub(crate) etag: String,
}

impl Download {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        let etag = format!("\"{}\"", &sha256_hex(&bytes)[..32]);
        Self { bytes: bytes.into(), etag }
    }
}

/// Browser copies by model id and weights digest, so that a re-imported id gets a new copy.
#[derive(Default)]
pub(crate) struct BrowserModels {
    made: Mutex<HashMap<(String, String), Arc<Download>>>,
}

impl BrowserModels {
    /// The browser's copy of model `id`, made on first request.
    pub(crate) fn get(&self, models: &ModelStore, id: &str) -> Result<Arc<Download>, ModelStoreError> {
        let entry = models.get(id).ok_or_else(|| ModelStoreError::Unknown(id.to_owned()))?;
        let key = (id.to_owned(), entry.info.digest.clone());
        if let Some(download) = self.made.lock().expect("downloads lock").get(&key) {
            return Ok(download.clone());
        }
        let file = crate::storage::model_file::ModelFile::read(&entry.path)?;
        let download = Arc::new(Download::new(file.browser_weights()));
        self.made.lock().expect("downloads lock").insert(key, download.clone());
        Ok(download)
    }
}
