//! What the unit tests share: the real dataset, the shipped models, scratch data folders.

use std::path::{Path, PathBuf};

use unlearn_shared::model::{weights, ResNetConfig};

use crate::storage::model_file::{Layout, ModelFile, ModelMeta};

pub(crate) fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository's root").to_owned()
}

/// The data folder holding the verified CIFAR-10 cache (`backend data` makes it).
pub(crate) fn real_data_dir() -> PathBuf {
    let dir = std::env::var_os("WORKBENCH_DATA").map_or_else(|| repository().join("data"), PathBuf::from);
    assert!(dir.join("cifar10/manifest.json").exists(), "CIFAR-10 is not in {}; run `backend data` first (the README's test command does)", dir.display());
    dir
}

/// The models the repository ships.
pub(crate) fn shipped_models() -> PathBuf {
    repository().join("models")
}

/// A fresh data folder whose dataset is the real one (linked, not copied).
pub(crate) fn scratch_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    std::os::unix::fs::symlink(real_data_dir().join("cifar10"), dir.path().join("cifar10")).expect("link dataset");
    dir
}

/// Keeps the GPU backends' caches in the workspace's target folder, not in a `target`
/// folder beside the crate (CubeCL's default from a test's working directory).
pub(crate) fn keep_gpu_caches() {
    crate::engine::device::keep_gpu_caches_in(&repository().join("target/gpu-cache"));
}

/// A ResNet18 of width 4 with random weights, stored as model `id` in `data_dir`: big
/// enough to run every code path, small enough to train and unlearn in seconds.
pub(crate) fn tiny_model(data_dir: &Path, id: &str) -> PathBuf {
    let model = ResNetConfig::new().with_width(4).init::<burn::backend::Flex>(&Default::default());
    let path = data_dir.join("models").join(format!("{id}.safetensors"));
    let meta = ModelMeta { provenance: "random tiny model for tests".into(), ..Default::default() };
    ModelFile { meta, weights: weights::export(&model), optimizer: Default::default() }.write(&path, Layout::File).expect("write tiny model");
    path
}
