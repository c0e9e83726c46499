//! Results that take minutes to compute and never change for the same inputs (importances,
//! penultimate features, last-stage inputs), kept on disk as safetensors under names their producer derives
//! from those inputs.

use std::path::{Path, PathBuf};

use unlearn_shared::model::weights::{self, Metadata, Precision, StateDict};

use super::files::{remove_partials, write_atomic_with};
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

    /// Whether there is a whole entry `name`: its header reads and the file is as long as
    /// the header says. Read from the header alone, to plan by: an entry cut short (a full
    /// disk, a copy interrupted) or that is not safetensors counts as missing, so that a
    /// request is not planned (or admitted) as cached and then has to compute it.
    pub(crate) fn contains(&self, name: &str) -> bool {
        let path = self.path(name);
        match whole_entry(&path) {
            Ok(whole) => whole,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => {
                tracing::warn!(entry = %path.display(), %error, "ignoring an unreadable cache entry");
                false
            }
        }
    }

    pub(crate) fn put(&self, name: &str, tensors: &StateDict) -> Result<(), CacheError> {
        let path = self.path(name);
        let io = |source| CacheError { path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        write_atomic_with(&path, |temporary| weights::write(tensors, Metadata::new(), Precision::F32, temporary)).map_err(io)?;
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

/// Headers longer than this are not a cache entry's (ours are a few hundred bytes).
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Whether the safetensors file at `path` is whole: an 8-byte little-endian header length, a
/// JSON header whose tensors' `data_offsets` end where the file does.
fn whole_entry(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let mut prefix = [0; 8];
    if length < 8 || file.read_exact(&mut prefix).is_err() {
        return Ok(false);
    }
    let header_bytes = u64::from_le_bytes(prefix);
    if header_bytes > MAX_HEADER_BYTES.min(length - 8) {
        return Ok(false);
    }
    let mut header = vec![0; header_bytes as usize];
    file.read_exact(&mut header)?;
    let Ok(serde_json::Value::Object(header)) = serde_json::from_slice(&header) else {
        return Ok(false);
    };
    let ends: Option<Vec<u64>> =
        header.iter().filter(|(key, _)| *key != "__metadata__").map(|(_, tensor)| tensor.get("data_offsets")?.get(1)?.as_u64()).collect();
    let end = ends.map(|ends| ends.into_iter().max().unwrap_or(0).checked_add(8 + header_bytes));
    Ok(end == Some(Some(length)))
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

    /// An entry cut short, emptied or overwritten with something else is not planned by as
    /// cached; a whole one is, and reads.
    #[test]
    fn only_whole_entries_count_as_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TensorCache::open(dir.path(), 1 << 30);
        let mut tensors = StateDict::new();
        tensors.insert("features".into(), weights::NamedTensor { shape: vec![4, 8], values: vec![0.25; 32] });
        tensors.insert("other".into(), weights::NamedTensor { shape: vec![3], values: vec![1.0; 3] });
        cache.put("entry", &tensors).unwrap();
        assert!(cache.contains("entry") && cache.get("entry").is_some());
        let whole = std::fs::read(cache.path("entry")).unwrap();
        let damaged: [(&str, Vec<u8>); 7] = [
            ("cut short", whole[..whole.len() - 1].to_vec()),
            ("with bytes after the data", [&whole[..], &[0]].concat()),
            ("empty", Vec::new()),
            ("a header length past the file", [&u64::MAX.to_le_bytes()[..], &whole[8..]].concat()),
            ("not safetensors", b"{\"features\": [1, 2, 3]}".to_vec()),
            ("a header without data offsets", header(r#"{"features":{"dtype":"F32","shape":[1]}}"#, 4)),
            ("an end offset past any file", header(&format!(r#"{{"features":{{"dtype":"F32","shape":[1],"data_offsets":[0,{}]}}}}"#, u64::MAX), 4)),
        ];
        for (what, bytes) in damaged {
            std::fs::write(cache.path("entry"), bytes).unwrap();
            assert!(!cache.contains("entry"), "{what}");
            assert!(cache.get("entry").is_none(), "{what}");
        }
        assert!(!cache.contains("missing"));
        std::fs::write(cache.path("entry"), header(r#"{"features":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 4)).unwrap();
        assert!(cache.contains("entry"), "a hand-made whole entry");
    }

    /// A safetensors file: the length of `json`, `json`, then `data` zero bytes.
    fn header(json: &str, data: usize) -> Vec<u8> {
        [&(json.len() as u64).to_le_bytes()[..], json.as_bytes(), &vec![0; data]].concat()
    }
}
