//! Results that take minutes to compute and never change for the same inputs (importances),
//! kept on disk as safetensors under names their producer derives from those inputs.

use std::path::{Path, PathBuf};

use unlearn_shared::model::weights::{self, Metadata, Precision, StateDict};

use super::files::{remove_partials, write_atomic};

pub(crate) struct TensorCache {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("cache {path}: {source}")]
pub(crate) struct CacheError {
    path: PathBuf,
    source: std::io::Error,
}

impl TensorCache {
    pub(crate) fn open(dir: &Path) -> Self {
        remove_partials(dir);
        Self { dir: dir.to_owned() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.safetensors"))
    }

    /// The entry `name`, if there is a readable one; an unreadable entry is logged and treated
    /// as missing, since it can be recomputed.
    pub(crate) fn get(&self, name: &str) -> Option<StateDict> {
        let path = self.path(name);
        let bytes = std::fs::read(&path).ok()?;
        match weights::decode(&bytes) {
            Ok((tensors, _)) => Some(tensors),
            Err(error) => {
                tracing::warn!(entry = %path.display(), %error, "ignoring an unreadable cache entry");
                None
            }
        }
    }

    pub(crate) fn put(&self, name: &str, tensors: &StateDict) -> Result<(), CacheError> {
        let path = self.path(name);
        let io = |source| CacheError { path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        write_atomic(&path, &weights::encode(tensors, Metadata::new(), Precision::F32)).map_err(io)
    }
}
