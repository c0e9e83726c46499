//! Results that take minutes to compute and never change for the same inputs (importances,
//! penultimate features), kept on disk as safetensors under names their producer derives
//! from those inputs.

use std::path::{Path, PathBuf};

use unlearn_shared::model::weights::{self, Metadata, Precision, StateDict};

use super::files::{remove_partials, write_atomic};
use super::retention;

/// Entries are deleted, least recently used first, when they outgrow `budget` bytes.
pub(crate) struct TensorCache {
    dir: PathBuf,
    budget: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cache {path}: {source}")]
pub(crate) struct CacheError {
    path: PathBuf,
    source: std::io::Error,
}

impl TensorCache {
    pub(crate) fn open(dir: &Path, budget: u64) -> Self {
        remove_partials(dir);
        Self { dir: dir.to_owned(), budget }
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
            Ok((tensors, _)) => {
                retention::touch(&path);
                Some(tensors)
            }
            Err(error) => {
                tracing::warn!(entry = %path.display(), %error, "ignoring an unreadable cache entry");
                None
            }
        }
    }

    /// Whether there is an entry `name`, readable or not: enough to plan by.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    pub(crate) fn put(&self, name: &str, tensors: &StateDict) -> Result<(), CacheError> {
        let path = self.path(name);
        let io = |source| CacheError { path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        write_atomic(&path, &weights::encode(tensors, Metadata::new(), Precision::F32)).map_err(io)?;
        self.trim(&path);
        Ok(())
    }

    /// Deletes the least recently used entries other than `keep` past the budget.
    fn trim(&self, keep: &Path) {
        for file in retention::to_delete_beside(keep, self.budget) {
            match std::fs::remove_file(&file.path) {
                Ok(()) => tracing::info!(entry = %file.path.display(), budget_mib = self.budget >> 20, "deleted a cache entry to stay within the budget"),
                Err(error) => tracing::warn!(entry = %file.path.display(), %error, "could not delete a cache entry"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_past_the_budget_go_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = |n: usize| -> StateDict {
            let mut dict = StateDict::new();
            dict.insert("w".into(), weights::NamedTensor { shape: vec![n], values: vec![0.5; n] });
            dict
        };
        // Each entry is a little over 4 KB; the budget holds two.
        let cache = TensorCache::open(dir.path(), 9_000);
        assert!(!cache.contains("a"));
        cache.put("a", &tensors(1024)).unwrap();
        assert!(cache.contains("a"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put("b", &tensors(1024)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.get("a").is_some(), "reading a makes b the least recently used");
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.put("c", &tensors(1024)).unwrap();
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
        assert!(cache.get("b").is_none(), "b went");
        let big = TensorCache::open(dir.path(), 1);
        big.put("d", &tensors(1024)).unwrap();
        assert!(big.get("d").is_some(), "the entry just written stays, even alone over the budget");
    }
}
