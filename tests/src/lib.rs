//! What the end-to-end tests share: the `backend` binary (built by `cargo build --release -p
//! unlearn-backend`, which the test command runs first), the real dataset, scratch data
//! folders, a running server, and a browser.

pub mod postgres;
pub mod raw;
pub mod server;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use unlearn_shared::model::weights::{self, Metadata, Precision};
use unlearn_shared::model::ResNetConfig;

pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository's root").to_owned()
}

/// The `backend` binary beside this test's own build, checked to be newer than the sources
/// it is built from, so that a test never runs a stale build.
pub fn backend_binary() -> PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>/backend
    let binary = test.parent().and_then(Path::parent).expect("a cargo target folder").join("backend");
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing; run `cargo build --release -p unlearn-backend` first (scripts/test.sh does)", binary.display()));
    for crate_dir in ["backend", "shared"] {
        if let Some(newer) = newest_source(&repository().join(crate_dir)).filter(|(time, _)| *time > built) {
            panic!("{} is older than {}; run `cargo build --release -p unlearn-backend` first", binary.display(), newer.1.display());
        }
    }
    binary
}

fn newest_source(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") || path.file_name().is_some_and(|n| n == "Cargo.toml") {
            entry.metadata().and_then(|m| m.modified()).ok().map(|time| (time, path))
        } else {
            None
        };
        if let Some(candidate) = candidate.filter(|c| newest.as_ref().is_none_or(|n| c.0 > n.0)) {
            newest = Some(candidate);
        }
    }
    newest
}

/// The data folder holding the verified CIFAR-10 cache (`backend data` makes it).
pub fn real_data_dir() -> PathBuf {
    let dir = std::env::var_os("WORKBENCH_DATA").map_or_else(|| repository().join("data"), PathBuf::from);
    assert!(dir.join("cifar10/manifest.json").exists(), "CIFAR-10 is not in {}; run `backend data` first (the README's test command does)", dir.display());
    dir
}

/// The models the repository ships.
pub fn shipped_models() -> PathBuf {
    repository().join("models")
}

/// A fresh data folder whose dataset is the real one (linked, not copied).
pub fn scratch_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    std::os::unix::fs::symlink(real_data_dir().join("cifar10"), dir.path().join("cifar10")).expect("link dataset");
    dir
}

/// Runs `backend` on the CPU over `data_dir`, with the repository's shipped models.
pub fn backend(data_dir: &Path, args: &[&str]) -> Output {
    backend_on("cpu", data_dir, args)
}

/// Runs `backend` on `device` (`--device`) over `data_dir`, with the shipped models.
pub fn backend_on(device: &str, data_dir: &Path, args: &[&str]) -> Output {
    Command::new(backend_binary())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--shipped-models")
        .arg(shipped_models())
        .args(["--device", device])
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

/// A ResNet18 of width 4 with random weights as a plain torchvision-layout checkpoint:
/// big enough to run every code path, small enough to train and unlearn in seconds.
pub fn tiny_checkpoint(path: &Path) {
    let model = ResNetConfig::new().with_width(4).init::<burn::backend::Flex>(&Default::default());
    std::fs::create_dir_all(path.parent().expect("a folder")).expect("create the folder");
    std::fs::write(path, weights::encode(&weights::export(&model), Metadata::new(), Precision::F32)).expect("write the checkpoint");
}
