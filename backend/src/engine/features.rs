//! Penultimate features: what `fc` reads. A run that changes only `fc` (the classifier
//! scope) compares models that all share them, and every run evaluates the base model
//! through them, so each image's features are computed once per base model, and whole
//! splits are kept on disk. A store of the same kind holds what `layer4` reads, for unlearned
//! models that differ from the base model only from there on.

use std::collections::{HashMap, HashSet};

use burn::prelude::*;
use unlearn_shared::model::weights::{NamedTensor, StateDict};
use unlearn_shared::model::{NormStats, ResNet};

use super::batch::batch;
use super::progress::{Cancelled, PhaseTimer, Progress};
use super::{Images, Inputs};

/// Images per forward pass while extracting.
const EXTRACT_BATCH: usize = 250;
/// The one tensor of a cache entry: `[images, ..row shape]`, in the order of its images.
const CACHE_KEY: &str = "features";

/// Work per image of a pass that runs only `fc` on features, in forward-pass images: `fc`
/// is about 5,000 of ResNet18's 556 million multiply-adds per image; batching and reading
/// results make it dearer than that.
pub(crate) const CLASSIFIER_ONLY: f64 = 0.001;

/// Where in the model a store's activations are taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Boundary {
    /// The penultimate features, what `fc` reads.
    #[default]
    Penultimate,
    /// What the last stage, `layer4`, reads: the output of the first three.
    LastStage,
}

/// The activations at one boundary (the features, by default) of some images of one split,
/// by split index.
#[derive(Default)]
pub(crate) struct Features {
    boundary: Boundary,
    /// The shape of one image's activations.
    row_shape: Vec<usize>,
    /// Row of each image in `values`.
    rows: HashMap<usize, usize>,
    values: Vec<f32>,
}

impl Features {
    pub(crate) fn at(boundary: Boundary) -> Self {
        Self { boundary, ..Self::default() }
    }

    /// Values per image.
    fn width(&self) -> usize {
        self.row_shape.iter().product()
    }

    /// The images among `indices` without activations, each once, in their order.
    pub(crate) fn missing(&self, indices: &[usize]) -> Vec<usize> {
        let mut seen = HashSet::new();
        indices.iter().copied().filter(|i| !self.rows.contains_key(i) && seen.insert(*i)).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Images with activations.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether every image of a split of `images` images has its activations.
    pub(crate) fn covers(&self, images: usize) -> bool {
        self.len() == images
    }

    /// Runs `model` up to the boundary on the images of `images` that have no activations
    /// there yet, reporting progress as `phase`.
    pub(crate) fn extract<B: Backend>(
        &mut self,
        model: &ResNet<B>,
        images: Images,
        phase: &str,
        device: &B::Device,
        progress: &mut dyn Progress,
    ) -> Result<(), Cancelled> {
        let missing = self.missing(images.indices);
        let timer = PhaseTimer::start(phase, missing.len() as u64, progress);
        let mut done = 0;
        for chunk in missing.chunks(EXTRACT_BATCH) {
            if progress.cancelled() {
                return Err(Cancelled);
            }
            let images = batch::<B>(images.split, chunk, device).images;
            let activations = match self.boundary {
                Boundary::Penultimate => model.features(images, NormStats::Running).into_data(),
                Boundary::LastStage => model.last_stage_input(images, NormStats::Running).into_data(),
            };
            self.row_shape = activations.shape[1..].to_vec();
            // Exactly what the missing images take: growing by doubling would copy and hold up
            // to twice the activations (64 KB an image at the last stage's input).
            self.values.reserve_exact((missing.len() - done) * self.width());
            self.values.extend(activations.convert::<f32>().to_vec::<f32>().expect("float data"));
            for &index in chunk {
                let row = self.rows.len();
                self.rows.insert(index, row);
            }
            done += chunk.len();
            progress.report(&timer.event(done as u64));
        }
        Ok(())
    }

    /// The activations of the images at `chunk`, which must have them, in rows.
    fn rows(&self, chunk: &[usize]) -> Vec<f32> {
        let width = self.width();
        let mut values = Vec::with_capacity(chunk.len() * width);
        for index in chunk {
            let row = self.rows[index];
            values.extend_from_slice(&self.values[row * width..(row + 1) * width]);
        }
        values
    }

    /// The images at `indices`, which must all have activations, in that order, as the cache
    /// keeps them.
    pub(crate) fn to_state_dict(&self, indices: &[usize]) -> StateDict {
        let shape = [&[indices.len()][..], &self.row_shape].concat();
        StateDict::from([(CACHE_KEY.to_owned(), NamedTensor { shape, values: self.rows(indices) })])
    }

    /// A cache entry of the images at `indices` with activations of `row_shape` each at
    /// `boundary`; `None` if it is not that (a different model, say), so that they are
    /// computed again.
    pub(crate) fn from_state_dict(mut tensors: StateDict, indices: &[usize], boundary: Boundary, row_shape: &[usize]) -> Option<Self> {
        let shape = [&[indices.len()][..], row_shape].concat();
        let width: usize = row_shape.iter().product();
        let entry = tensors.remove(CACHE_KEY).filter(|t| t.shape == shape && t.values.len() == indices.len() * width && tensors.is_empty())?;
        let rows: HashMap<usize, usize> = indices.iter().enumerate().map(|(row, &index)| (index, row)).collect();
        (rows.len() == indices.len()).then(|| Self { boundary, row_shape: row_shape.to_vec(), rows, values: entry.values })
    }
}

/// Images run from their activations at a boundary: only the model's layers past it are
/// used, so the activations must come from a model that differs from it in nothing else.
#[derive(Clone, Copy)]
pub(crate) struct Featured<'a> {
    pub(crate) images: Images<'a>,
    pub(crate) features: &'a Features,
}

impl Inputs for Featured<'_> {
    fn images(&self) -> Images<'_> {
        self.images
    }

    fn features<B: Backend>(&self, model: &ResNet<B>, chunk: &[usize], device: &B::Device) -> Tensor<B, 2> {
        let shape = [&[chunk.len()][..], &self.features.row_shape].concat();
        let data = TensorData::new(self.features.rows(chunk), shape);
        match self.features.boundary {
            Boundary::Penultimate => Tensor::from_data(data, device),
            Boundary::LastStage => model.features_from_last_stage(Tensor::from_data(data, device), NormStats::Running),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    use unlearn_shared::model::weights::{self, StateDict};
    use unlearn_shared::model::ResNetConfig;

    use super::*;
    use crate::engine::device::CpuBackend;
    use crate::engine::evaluate::{evaluate, Kept};
    use crate::engine::evaluation::Evaluation;
    use crate::engine::progress::Silent;
    use crate::engine::ssd::importance;
    use crate::storage::dataset::{prepare, Cifar10, Source};
    use crate::storage::model_store::ModelStore;
    use crate::testing;

    type Ad = Autodiff<CpuBackend>;

    /// Largest difference between two lists, relative to the larger magnitude (at least 1e-3).
    fn worst_relative(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-3)).fold(0.0, f32::max)
    }

    /// Runs the model on `train` and `test` images from their pixels and from their features,
    /// and checks that `fc`'s importance and the evaluation agree, and the evaluation from
    /// what `layer4` reads too: those routes give what running the whole model gives, to
    /// within `tolerance`.
    fn routes_agree(weights: StateDict, data: &Cifar10, train: &[usize], test: &[usize], tolerance: f32) {
        let device = Default::default();
        let model = weights::model_from_state_dict::<Ad>(weights, &device).unwrap();
        let inner = model.valid();
        let (mut train_features, mut test_features) = (Features::default(), Features::default());
        train_features.extract(&inner, Images { split: &data.train, indices: train }, "train", &device, &mut Silent).unwrap();
        test_features.extract(&inner, Images { split: &data.test, indices: test }, "test", &device, &mut Silent).unwrap();
        assert_eq!((train_features.len(), train_features.missing(train)), (train.len(), Vec::new()));

        let pixels = Images { split: &data.train, indices: train };
        let featured = Featured { images: pixels, features: &train_features };
        let from_pixels = importance(&model, pixels, 64, "pixels", &device, &mut Silent).unwrap();
        let from_features = importance(&model, featured, 64, "features", &device, &mut Silent).unwrap();
        assert_eq!(from_features.tensors.keys().collect::<Vec<_>>(), ["fc.bias", "fc.weight"], "features reach fc alone");
        for (key, tensor) in &from_features.tensors {
            let values = |t: &Tensor<CpuBackend, 1>| t.clone().into_data().to_vec::<f32>().unwrap();
            let worst = worst_relative(&values(tensor), &values(&from_pixels.tensors[key]));
            println!("{key}: importance from features vs pixels, worst relative difference {worst:e}");
            assert!(worst <= tolerance, "{key}: {worst}");
        }

        let test_pixels = Images { split: &data.test, indices: test };
        let a = evaluate(&inner, test_pixels, Kept::Logits, "pixels", &device, &mut Silent).unwrap();
        let mut stage_inputs = Features::at(Boundary::LastStage);
        stage_inputs.extract(&inner, test_pixels, "test", &device, &mut Silent).unwrap();
        let entropies = |e: &Evaluation| e.entropies(|_| true).iter().map(|&x| x as f32).collect::<Vec<_>>();
        let losses = |e: &Evaluation| e.loss_sum.iter().map(|&x| x as f32).collect::<Vec<_>>();
        for (features, boundary) in [(&test_features, "features"), (&stage_inputs, "last-stage inputs")] {
            let b = evaluate(&inner, Featured { images: test_pixels, features }, Kept::Logits, boundary, &device, &mut Silent).unwrap();
            assert_eq!(a.confusion, b.confusion, "{boundary}: every prediction is the same");
            let (entropy, loss) = (worst_relative(&entropies(&a), &entropies(&b)), worst_relative(&losses(&a), &losses(&b)));
            println!("evaluation from {boundary} vs pixels: worst relative difference of entropies {entropy:e}, of summed losses {loss:e}");
            assert!(entropy <= tolerance && loss <= tolerance, "{boundary}: {entropy} {loss}");
        }
    }

    #[test]
    fn a_small_model_gives_the_same_from_features_as_from_images() {
        let data = prepare(&testing::real_data_dir(), &Source::Npm).unwrap();
        let model = ResNetConfig::new().with_width(4).init::<CpuBackend>(&Default::default());
        let train: Vec<usize> = (0..300).map(|i| i * 7).collect();
        let test: Vec<usize> = (0..300).collect();
        routes_agree(weights::export(&model), &data, &train, &test, 1e-4);
    }

    #[test]
    fn the_reference_model_gives_the_same_from_features_as_from_images() {
        let data = prepare(&testing::real_data_dir(), &Source::Npm).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let models = ModelStore::open(scratch.path(), &testing::shipped_models()).unwrap();
        let train: Vec<usize> = (0..192).map(|i| i * 11).collect();
        let test: Vec<usize> = (0..256).collect();
        routes_agree(models.read("reference").unwrap().weights, &data, &train, &test, 1e-3);
    }

    #[test]
    fn a_cache_entry_reads_back_only_as_the_images_it_was() {
        let mut features = Features { row_shape: vec![2], ..Default::default() };
        for (index, row) in [(2, [5.0, 6.0]), (0, [1.0, 2.0]), (1, [3.0, 4.0])] {
            features.rows.insert(index, features.rows.len());
            features.values.extend(row);
        }
        let whole = [0, 1, 2];
        let entry = features.to_state_dict(&whole);
        assert_eq!(entry[CACHE_KEY].values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "split order");
        let back = Features::from_state_dict(entry.clone(), &whole, Boundary::Penultimate, &[2]).expect("reads back");
        assert_eq!(back.rows(&[2, 0]), features.rows(&[2, 0]));
        assert!(Features::from_state_dict(entry.clone(), &[0, 1, 2, 3], Boundary::Penultimate, &[2]).is_none(), "another split size");
        assert!(Features::from_state_dict(entry.clone(), &whole, Boundary::Penultimate, &[3]).is_none(), "another model width");
        assert!(Features::from_state_dict(entry.clone(), &[0, 1, 1], Boundary::Penultimate, &[2]).is_none(), "an image twice");
        let mut extra = entry;
        extra.insert("other".into(), NamedTensor { shape: vec![1], values: vec![0.0] });
        assert!(Features::from_state_dict(extra, &whole, Boundary::Penultimate, &[2]).is_none(), "something else");

        // A subset, in its own order, with rows of any shape.
        let subset = features.to_state_dict(&[2, 0]);
        assert_eq!(subset[CACHE_KEY].shape, [2, 2]);
        let back = Features::from_state_dict(subset, &[2, 0], Boundary::LastStage, &[2]).expect("reads back");
        assert_eq!((back.rows(&[0, 2]), back.missing(&[1])), (features.rows(&[0, 2]), vec![1]));
    }
}
