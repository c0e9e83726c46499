//! What the integration tests share: the real dataset, the reference checkpoint, and a
//! scratch data folder per test.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The data folder holding the verified CIFAR-10 cache (`backend data` makes it).
pub fn real_data_dir() -> PathBuf {
    let dir = std::env::var_os("WORKBENCH_DATA").map_or_else(|| workspace().join("data"), PathBuf::from);
    assert!(
        dir.join("cifar10/manifest.json").exists(),
        "CIFAR-10 is not in {}; run `cargo run --release -p unlearn-backend -- data` first (the README's test command does)",
        dir.display()
    );
    dir
}

/// The PyTorch-trained reference checkpoint in `../shared/models/`.
pub fn reference_checkpoint() -> PathBuf {
    let path = workspace().join("../shared/models/resnet18-cifar10-seed-recipe-torch.safetensors");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A fresh data folder whose dataset is the real one (linked, not copied).
pub fn scratch_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    std::os::unix::fs::symlink(real_data_dir().join("cifar10"), dir.path().join("cifar10")).expect("link dataset");
    dir
}

pub fn backend(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .expect("backend runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(output: Output) -> String {
    assert!(output.status.success(), "backend failed ({}):\n{}\n{}", output.status, stdout(&output), stderr(&output));
    stdout(&output)
}

/// Asserts failure and returns stderr.
pub fn fails(output: Output) -> String {
    assert!(!output.status.success(), "backend should have failed:\n{}", stdout(&output));
    stderr(&output)
}

/// A ResNet18 of width 4 with random weights, stored as model `id` in `data_dir`: big
/// enough to run every code path, small enough to train and unlearn in seconds.
pub fn tiny_model(data_dir: &Path, id: &str) -> PathBuf {
    use unlearn_backend::device::CpuBackend;
    use unlearn_backend::models::{ModelFile, ModelMeta};
    use unlearn_shared::model::{weights, ResNetConfig};

    let model = ResNetConfig::new().with_width(4).init::<CpuBackend>(&Default::default());
    let path = data_dir.join("models").join(format!("{id}.safetensors"));
    let meta = ModelMeta { provenance: "random tiny model for tests".into(), ..Default::default() };
    ModelFile { meta, weights: weights::export(&model), optimizer: Default::default() }.write(&path).expect("write tiny model");
    path
}
