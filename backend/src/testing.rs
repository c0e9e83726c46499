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

/// A made-up report of forgetting `class`: on two test images per class, the base model is
/// right about all, the unlearned one about all but the forget class's (it calls them the
/// next class).
pub(crate) fn made_up_report(class: usize) -> unlearn_shared::api::UnlearnReport {
    use unlearn_shared::api::{DampenStats, LogitMaskReport, Membership, Preset, Timings, UnlearnReport};
    use unlearn_shared::cifar::NUM_CLASSES;

    use crate::engine::evaluation::{model_report, Evaluation};

    // A margin so wide that every loss is exactly 0 or 100, as JSON reads them back.
    let sure_of = |predicted: usize| {
        let mut logits = [0.0; NUM_CLASSES];
        logits[predicted] = 100.0;
        logits
    };
    let (mut before, mut after) = (Evaluation::default(), Evaluation::default());
    for (index, label) in (0..NUM_CLASSES).flat_map(|label| [label, label]).enumerate() {
        before.record(index, label, &sure_of(label), &[]);
        after.record(index, label, &sure_of(if label == class { (label + 1) % NUM_CLASSES } else { label }), &[]);
    }
    let masked = before.masked(class);
    let settings = Preset::Seed.settings();
    UnlearnReport {
        model: "tiny".into(),
        device: "cpu".into(),
        forget_class: class,
        settings,
        alpha: 10.0,
        layers: settings.layers,
        calibration: None,
        subsample: Default::default(),
        dampened: DampenStats { selected: 1, total: 10 },
        membership: Membership { before: 60.0, after: 40.0, images: 2, entropy: None },
        before: model_report(&before, &before, class),
        after: model_report(&after, &after, class),
        timings: Timings::default(),
        still_recognised: Vec::new(),
        retrained: None,
        logit_mask: Some(LogitMaskReport { report: model_report(&masked, &masked, class), membership: 50.0 }),
        probe: None,
        relearning: None,
    }
}
