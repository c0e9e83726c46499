//! Kernels in Winograd's form kept for weights that are used call after call (a model at
//! inference), where transforming them costs a share of the products they serve worth saving: a
//! single image, as the browser classifies, from `layer1` to `layer3`.
//!
//! An entry lasts as long as its weight's storage, unchanged: it holds a weak reference to
//! the storage, and Flex (checked for the pinned 0.21.0) changes storage in place only through
//! `Arc::make_mut`, which moves weakly referenced storage elsewhere, or `Arc::get_mut`, which
//! refuses it. Entries of storage that is gone are let go at the next call.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use burn::backend::flex::FlexTensor;
use burn::tensor::Bytes;

/// The process's kept kernels: at most 80 MiB (two models' `layer1` to `layer3`, the page's
/// base and unlearned models, 9.4 million values each), and only convolutions' of at most 4
/// million values (16 MiB): `layer3`'s (2.4 million) are kept, `layer4`'s (9.4 million), which
/// a server's last few images of a set would otherwise hold on to, are not.
pub(super) static KEPT: KeptKernels = KeptKernels::new(20 << 20, 4 << 20);

/// Kernels kept within bounds, least recently used going first.
pub(super) struct KeptKernels {
    entries: Mutex<Vec<Entry>>,
    max_values: usize,
    max_entry_values: usize,
}

struct Entry {
    storage: Weak<Bytes>,
    shape: [usize; 4],
    kernels: Arc<[f32]>,
}

impl KeptKernels {
    const fn new(max_values: usize, max_entry_values: usize) -> Self {
        Self { entries: Mutex::new(Vec::new()), max_values, max_entry_values }
    }

    /// Whether one convolution's kernels of `values` values would be kept.
    pub(super) fn keeps(&self, values: usize) -> bool {
        values <= self.max_entry_values
    }

    /// `transform()` of `weight`, kept for later calls with the same weight while it lasts.
    /// The lock is not held while transforming: the transform runs on rayon, whose waiting
    /// threads may take on other convolutions.
    pub(super) fn kernels(&self, weight: &FlexTensor, transform: impl FnOnce() -> Arc<[f32]>) -> Arc<[f32]> {
        let storage = weight.data_arc();
        let shape = weight.layout().shape().dims();
        // Only a view of the whole storage is the storage's values.
        if weight.layout().contiguous_offsets() != Some((0, storage.len() / size_of::<f32>())) {
            return transform();
        }
        let key = Arc::downgrade(&storage);
        let find = |entries: &mut Vec<Entry>| {
            entries.retain(|entry| entry.storage.strong_count() > 0);
            let index = entries.iter().position(|entry| entry.storage.ptr_eq(&key) && entry.shape == shape)?;
            let entry = entries.remove(index);
            let kernels = entry.kernels.clone();
            entries.push(entry);
            Some(kernels)
        };
        if let Some(kernels) = find(&mut self.lock()) {
            return kernels;
        }
        let kernels = transform();
        let mut entries = self.lock();
        // Another thread may have kept them meanwhile.
        if let Some(kernels) = find(&mut entries) {
            return kernels;
        }
        if self.keeps(kernels.len()) {
            entries.push(Entry { storage: key, shape, kernels: kernels.clone() });
            while entries.iter().map(|entry| entry.kernels.len()).sum::<usize>() > self.max_values {
                entries.remove(0);
            }
        }
        kernels
    }

    /// Whether kernels are kept for `weight`.
    #[cfg(test)]
    pub(super) fn holds(&self, weight: &FlexTensor) -> bool {
        let key = Arc::downgrade(&weight.data_arc());
        self.lock().iter().any(|entry| entry.storage.ptr_eq(&key))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        // The list stays consistent whatever a panicking holder was doing.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use burn::tensor::TensorData;

    use super::*;

    fn weight() -> FlexTensor {
        FlexTensor::from_data(TensorData::new((0..2 * 3 * 9).map(|i| i as f32).collect::<Vec<f32>>(), [2, 3, 3, 3]))
    }

    /// `kept`'s kernels of `weight` (its values doubled), and whether it transformed them.
    fn kernels_of(kept: &KeptKernels, weight: &FlexTensor) -> (Arc<[f32]>, bool) {
        let transformed = Cell::new(false);
        let kernels = kept.kernels(weight, || {
            transformed.set(true);
            weight.storage::<f32>().iter().map(|value| value * 2.0).collect()
        });
        (kernels, transformed.get())
    }

    #[test]
    fn kernels_are_transformed_once_per_weight_while_it_lasts_unchanged() {
        let kept = KeptKernels::new(1000, 100);
        let weight = weight();
        let (first, transformed) = kernels_of(&kept, &weight);
        assert!(transformed);
        let (again, transformed) = kernels_of(&kept, &weight.clone());
        assert!(!transformed, "the same storage, kept");
        assert!(Arc::ptr_eq(&first, &again));

        let (_, transformed) = kernels_of(&kept, &weight.clone().narrow(0, 0, 1));
        assert!(transformed, "a view of part of the storage is not its values");

        let mut changed = weight.clone();
        changed.storage_mut::<f32>()[0] = 100.0;
        let (kernels, transformed) = kernels_of(&kept, &changed);
        assert!(transformed, "changed in place");
        assert_eq!(kernels[0], 200.0);

        let mut only = weight;
        let key = Arc::downgrade(&only.data_arc());
        only.storage_mut::<f32>()[0] = 7.0;
        assert!(key.strong_count() == 0, "an in-place change moves weakly referenced storage");
        assert!(kernels_of(&kept, &only).1, "changed in place, the only owner");
        drop(only);
        // Entries of storage that is gone are let go at the next call.
        let _ = kernels_of(&kept, &changed);
        assert_eq!(kept.lock().len(), 1);
        assert!(kept.holds(&changed));
    }

    #[test]
    fn kept_kernels_stay_within_bounds_least_recently_used_going_first() {
        let kept = KeptKernels::new(4 * 54, 54);
        let too_large = FlexTensor::from_data(TensorData::new(vec![1.0f32; 55], [1, 1, 1, 55]));
        let _ = kernels_of(&kept, &too_large);
        assert!(!kept.holds(&too_large), "one convolution's past the bound");

        let weights: Vec<FlexTensor> = (0..5).map(|_| weight()).collect();
        for weight in &weights {
            let _ = kernels_of(&kept, weight);
        }
        assert!(!kept.holds(&weights[0]), "the least recently used, dropped");
        assert!(weights[1..].iter().all(|weight| kept.holds(weight)));
        let _ = kernels_of(&kept, &weights[1]);
        let _ = kernels_of(&kept, &weights[0]);
        assert!(kept.holds(&weights[1]) && !kept.holds(&weights[2]), "used again, so not the least recently used");
    }
}
