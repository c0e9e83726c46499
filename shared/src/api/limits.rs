//! Sizes no request may exceed, whoever asks: beyond them one request needs more memory
//! than a workbench host has, or names more images than CIFAR-10 holds.

use crate::cifar::{NUM_CLASSES, TEST_IMAGES, TRAIN_IMAGES};

/// Largest mini-batch of training or of an importance pass. Activations and their gradients
/// take about 3.3 MB per image in ResNet18 (a batch of 2,000 needed 6.5 GB), so this bounds
/// one batch to about 1.7 GB.
pub const MAX_BATCH: usize = 512;
/// Training images of one class.
pub const CLASS_TRAIN_IMAGES: usize = TRAIN_IMAGES / NUM_CLASSES;
/// Longest training run.
pub const MAX_EPOCHS: usize = 200;
/// Widest first stage: 64 is ResNet18; the weights grow with its square.
pub const MAX_WIDTH: usize = 128;

/// `Some(value)` must lie in `1..=max`; `None` (the whole set) always may.
pub(crate) fn check_count(name: &str, value: Option<usize>, max: usize, what: &str) -> Result<(), String> {
    match value {
        Some(0) => Err(format!("{name} must be at least 1 when given")),
        Some(n) if n > max => Err(format!("{name} may be at most {max} ({what}), got {n}; leave it out for the whole set")),
        _ => Ok(()),
    }
}

pub(crate) fn check_test_limit(name: &str, value: Option<usize>) -> Result<(), String> {
    check_count(name, value, TEST_IMAGES, "the test set's size")
}

pub(crate) fn check_train_limit(name: &str, value: Option<usize>) -> Result<(), String> {
    check_count(name, value, TRAIN_IMAGES, "the training set's size")
}

/// A batch size in `1..=MAX_BATCH`.
pub(crate) fn check_batch(name: &str, value: usize) -> Result<(), String> {
    match value {
        0 => Err(format!("{name} must be at least 1")),
        n if n > MAX_BATCH => Err(format!("{name} may be at most {MAX_BATCH} (about 3.3 MB of memory per image), got {n}")),
        _ => Ok(()),
    }
}
