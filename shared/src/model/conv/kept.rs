//! Kernels in Winograd's form kept for weights that are used call after call (a model at
//! inference), where transforming them costs as much as the products they serve: a single
//! image, as the browser classifies, from `layer3` on.
//!
//! An entry lasts as long as its weight's storage, unchanged: it holds a weak reference to
//! the storage, and Flex changes storage in place only through `Arc::make_mut` (which moves
//! weakly referenced storage elsewhere) or `Arc::get_mut` (which refuses it).

use std::sync::{Arc, Mutex, PoisonError, Weak};

use burn::backend::flex::FlexTensor;
use burn::tensor::Bytes;

/// Values kept at most (64 MiB): two models' `layer3` (the browser's base and unlearned
/// models), 7.1 million values each.
const MAX_KEPT_VALUES: usize = 16 << 20;

/// Values of one convolution's kernels past which they are not kept (16 MiB): `layer3`'s
/// (2.4 million) are; `layer4`'s (9.4 million), which a server's last few images of a set
/// would otherwise hold on to, are not.
const MAX_ENTRY_VALUES: usize = 4 << 20;

struct Entry {
    storage: Weak<Bytes>,
    shape: [usize; 4],
    kernels: Arc<[f32]>,
}

/// The kept kernels, least recently used first.
static KEPT: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// `transform()` of `weight`, kept for later calls with the same weight while it lasts.
/// The lock is not held while transforming: the transform runs on rayon, whose waiting threads
/// may take on other convolutions.
pub(super) fn kernels(weight: &FlexTensor, transform: impl FnOnce() -> Vec<f32>) -> Arc<[f32]> {
    let storage = weight.data_arc();
    let shape = weight.layout().shape().dims();
    // Only a view of the whole storage is the storage's values.
    if weight.layout().contiguous_offsets() != Some((0, storage.len() / size_of::<f32>())) {
        return transform().into();
    }
    let key = Arc::downgrade(&storage);
    let find = |kept: &mut Vec<Entry>| {
        kept.retain(|entry| entry.storage.strong_count() > 0);
        let index = kept.iter().position(|entry| entry.storage.ptr_eq(&key) && entry.shape == shape)?;
        let entry = kept.remove(index);
        let kernels = entry.kernels.clone();
        kept.push(entry);
        Some(kernels)
    };
    if let Some(kernels) = find(&mut lock()) {
        return kernels;
    }
    let kernels: Arc<[f32]> = transform().into();
    let mut kept = lock();
    // Another thread may have kept them meanwhile.
    if let Some(kernels) = find(&mut kept) {
        return kernels;
    }
    if kernels.len() <= MAX_ENTRY_VALUES {
        kept.push(Entry { storage: key, shape, kernels: kernels.clone() });
        while kept.iter().map(|entry| entry.kernels.len()).sum::<usize>() > MAX_KEPT_VALUES {
            kept.remove(0);
        }
    }
    kernels
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    // The list stays consistent whatever a panicking holder was doing.
    KEPT.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use burn::tensor::TensorData;

    use super::*;

    fn weight() -> FlexTensor {
        FlexTensor::from_data(TensorData::new((0..2 * 3 * 9).map(|i| i as f32).collect::<Vec<f32>>(), [2, 3, 3, 3]))
    }

    /// `kernels` of `weight`, and whether it transformed them.
    fn kernels_of(weight: &FlexTensor) -> (Arc<[f32]>, bool) {
        let transformed = Cell::new(false);
        let kernels = kernels(weight, || {
            transformed.set(true);
            weight.storage::<f32>().iter().map(|value| value * 2.0).collect()
        });
        (kernels, transformed.get())
    }

    /// The tests below, one at a time: the second fills the store, which would drop the
    /// first's entries while it looks at them.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    fn is_kept(weight: &FlexTensor) -> bool {
        let key = Arc::downgrade(&weight.data_arc());
        lock().iter().any(|entry| entry.storage.ptr_eq(&key))
    }

    #[test]
    fn kernels_are_transformed_once_per_weight_while_it_lasts_unchanged() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let weight = weight();
        let (first, transformed) = kernels_of(&weight);
        assert!(transformed);
        let (again, transformed) = kernels_of(&weight.clone());
        assert!(!transformed, "the same storage, kept");
        assert!(Arc::ptr_eq(&first, &again));

        let (_, transformed) = kernels_of(&weight.clone().narrow(0, 0, 1));
        assert!(transformed, "a view of part of the storage is not its values");

        let mut changed = weight.clone();
        changed.storage_mut::<f32>()[0] = 100.0;
        let (kernels, transformed) = kernels_of(&changed);
        assert!(transformed, "changed in place");
        assert_eq!(kernels[0], 200.0);

        let mut only = weight;
        let key = Arc::downgrade(&only.data_arc());
        only.storage_mut::<f32>()[0] = 7.0;
        assert!(key.strong_count() == 0, "an in-place change moves weakly referenced storage");
        assert!(kernels_of(&only).1, "changed in place, the only owner");
        drop(only);
        // Entries of storage that is gone are dropped at the next call.
        let _ = kernels_of(&changed);
        assert!(lock().iter().all(|entry| entry.storage.strong_count() > 0));
        assert!(is_kept(&changed));
    }

    #[test]
    fn kept_kernels_stay_within_bounds_least_recently_used_going_first() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let too_large = weight();
        let _ = kernels(&too_large, || vec![0.0; MAX_ENTRY_VALUES + 1]);
        assert!(!is_kept(&too_large), "one convolution's past the bound");

        let weights: Vec<FlexTensor> = (0..MAX_KEPT_VALUES / MAX_ENTRY_VALUES + 1).map(|_| weight()).collect();
        for weight in &weights {
            let _ = kernels(weight, || vec![0.0; MAX_ENTRY_VALUES]);
        }
        assert!(!is_kept(&weights[0]), "the least recently used, dropped");
        assert!(weights[1..].iter().all(is_kept));
        assert!(lock().iter().map(|entry| entry.kernels.len()).sum::<usize>() <= MAX_KEPT_VALUES);
    }
}
