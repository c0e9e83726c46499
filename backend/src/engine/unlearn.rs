//! Forgetting one class of a trained model with SSD, and measuring what changed.

use std::collections::HashMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use unlearn_shared::api::{
    Alpha, ClassId, EntropyCounts, EntropyHistograms, Membership, ModelReport, RetrainedReport, SetOrder, SsdSettings, Subsample, Timings, UnlearnReport,
    MAX_STILL_RECOGNISED,
};
use unlearn_shared::model::weights::{self, StateDict, WeightsError};
use unlearn_shared::model::ResNet;

use super::calibrate::{self, calibrate, CalibrationConfig};
use super::device::Device;
use super::evaluate::evaluate;
use super::evaluation::{model_report, Evaluation};
use super::membership::{entropy_edges, entropy_histogram, MembershipAttack, ENTROPY_BINS};
use super::progress::{one_unit, Cancelled, Progress, Step, FORWARD, FORWARD_AND_BACKWARD};
use super::ssd::{dampen, importance, Importance, Importances};
use super::{sample, Images};
use crate::storage::dataset::Cifar10;
use crate::storage::tensor_cache::{CacheError, TensorCache};

/// Seed of the subsets drawn when a run is subsampled.
const SUBSAMPLE_SEED: u64 = 0;
/// Part of every importance cache name; bump it when the importance computation changes.
const IMPORTANCE_CACHE_VERSION: u32 = 1;
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

/// The models a run evaluates, as its phases name them.
const BASE: &str = "base model";
const UNLEARNED: &str = "unlearned model";
const RETRAINED: &str = "retrained model";

/// The phases of evaluating `model` on the three sets every report reads.
struct EvaluationPhases {
    test: String,
    train: String,
    forget_sample: String,
}

impl EvaluationPhases {
    fn of(model: &str) -> Self {
        Self {
            test: format!("evaluate {model}: test set"),
            train: format!("evaluate {model}: training subset"),
            forget_sample: format!("evaluate {model}: forget sample"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum UnlearnError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    #[error("storing the full-set importance")]
    Cache(#[from] CacheError),
}

/// One model on the sets every report reads.
struct Measured {
    test: Evaluation,
    train: Evaluation,
    /// The forget sample: images of the forget class from its training set.
    forget_sample: Evaluation,
}

impl Measured {
    fn report(&self, class: usize) -> ModelReport {
        model_report(&self.test, &self.train, class)
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

/// The model to unlearn from: its weights, and what reports and caches call it.
pub(crate) struct BaseModel {
    pub(crate) name: String,
    /// sha256 of the weights: keys the importance cache.
    pub(crate) digest: String,
    pub(crate) weights: StateDict,
}

/// One base model on one device, ready to forget any class. Keeps what does not depend on
/// the class: the full-set importances (also in the cache it is given) and the base model's
/// evaluation.
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
    base_evaluation: Option<(Evaluation, Evaluation)>,
    /// The base model on each class's forget sample.
    base_forget_sample: HashMap<usize, Evaluation>,
    /// Models of the same recipe trained without a class, by that class, with their names.
    retrained: HashMap<usize, (String, ResNet<B::InnerBackend>)>,
    full_importance: HashMap<(SetOrder, usize), Importance<B::InnerBackend>>,
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
        let mut timings = Timings::default();

        let started = Instant::now();
        let key = (settings.full_order, settings.importance_batch);
        if !self.full_importance.contains_key(&key) {
            let (full, cached) = self.load_or_compute_full_importance(settings, progress)?;
            timings.full_importance_cached = cached;
            self.full_importance.insert(key, full);
        } else {
            timings.full_importance_cached = true;
        }
        timings.full_importance_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let forget_indices = self.forget_indices(class);
        let forget_set = Images { split: &self.data.train, indices: &forget_indices };
        let forget = importance(&self.model, forget_set, settings.importance_batch, FORGET_IMPORTANCE, &self.device.handle, progress)?;
        timings.forget_importance_s = started.elapsed().as_secs_f64();

        let forget_sample = sample(forget_indices.clone(), Some(FORGET_SAMPLE_IMAGES), SUBSAMPLE_SEED);
        let importances = Importances { class, forget: &forget, full: &self.full_importance[&key] };
        let (unlearned, alpha, layers, calibration, dampened) = match settings.alpha {
            Alpha::Fixed(alpha) => {
                let started = Instant::now();
                let (unlearned, dampened) = dampen(self.model.valid(), &importances, alpha, settings);
                timings.dampen_s = started.elapsed().as_secs_f64();
                (unlearned, alpha, settings.layers, None, dampened)
            }
            Alpha::Auto => {
                let started = Instant::now();
                let config = CalibrationConfig::default();
                let sample = Images { split: &self.data.train, indices: &forget_sample };
                let found = calibrate(&self.model.valid(), &importances, settings, &config, sample, &self.device.handle, progress)?;
                timings.calibrate_s = started.elapsed().as_secs_f64();
                (found.model, found.alpha, found.layers, Some(found.calibration), found.dampened)
            }
        };

        let started = Instant::now();
        let (test, train) = self.base_evaluation(progress)?.clone();
        let before = Measured { test, train, forget_sample: self.base_forget_sample(class, &forget_sample, progress)? };
        let after = self.measure(&unlearned, &forget_sample, &EvaluationPhases::of(UNLEARNED), progress)?;
        timings.evaluate_s = started.elapsed().as_secs_f64();

        let retrained = match self.retrained.get(&class) {
            Some((name, model)) => {
                let measured = self.measure(model, &forget_sample, &EvaluationPhases::of(RETRAINED), progress)?;
                Some(RetrainedReport { model: name.clone(), report: measured.report(class), membership: measured.member_percent(class) })
            }
            None => None,
        };
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
        };
        Ok((report, unlearned))
    }

    /// The base model on the forget sample of `class`, evaluated once per class.
    fn base_forget_sample(&mut self, class: usize, forget_sample: &[usize], progress: &mut dyn Progress) -> Result<Evaluation, Cancelled> {
        if let Some(evaluation) = self.base_forget_sample.get(&class) {
            return Ok(evaluation.clone());
        }
        let images = Images { split: &self.data.train, indices: forget_sample };
        let evaluation = evaluate(&self.model.valid(), images, &EvaluationPhases::of(BASE).forget_sample, &self.device.handle, progress)?;
        self.base_forget_sample.insert(class, evaluation.clone());
        Ok(evaluation)
    }

    /// On the test subset, the training subset and the forget sample.
    fn measure(
        &self,
        model: &ResNet<B::InnerBackend>,
        forget_sample: &[usize],
        phases: &EvaluationPhases,
        progress: &mut dyn Progress,
    ) -> Result<Measured, Cancelled> {
        let (test, train) = self.evaluate_both(model, phases, progress)?;
        let images = Images { split: &self.data.train, indices: forget_sample };
        let forget_sample = evaluate(model, images, &phases.forget_sample, &self.device.handle, progress)?;
        Ok(Measured { test, train, forget_sample })
    }

    /// On the test subset and on the training subset.
    fn evaluate_both(
        &self,
        model: &ResNet<B::InnerBackend>,
        phases: &EvaluationPhases,
        progress: &mut dyn Progress,
    ) -> Result<(Evaluation, Evaluation), Cancelled> {
        let device = &self.device.handle;
        Ok((
            evaluate(model, Images { split: &self.data.test, indices: &self.test_indices }, &phases.test, device, progress)?,
            evaluate(model, Images { split: &self.data.train, indices: &self.train_indices }, &phases.train, device, progress)?,
        ))
    }

    fn base_evaluation(&mut self, progress: &mut dyn Progress) -> Result<&(Evaluation, Evaluation), Cancelled> {
        if self.base_evaluation.is_none() {
            self.base_evaluation = Some(self.evaluate_both(&self.model.valid(), &EvaluationPhases::of(BASE), progress)?);
        }
        Ok(self.base_evaluation.as_ref().expect("just computed"))
    }

    /// The training images of `class` that the forget-set importance is taken over.
    fn forget_indices(&self, class: usize) -> Vec<usize> {
        sample(self.data.train.indices_of(class), self.subsample.forget, SUBSAMPLE_SEED)
    }

    /// The phases of forgetting each of `classes` in turn, with their costs, named by `name`
    /// (which may add the class): work that is cached now, or will be by an earlier class
    /// of the list, is left out.
    pub(crate) fn plan(&self, classes: &[ClassId], settings: &SsdSettings, name: impl Fn(ClassId, &str) -> String) -> Vec<Step> {
        let full_images = self.full_indices(settings.full_order).len();
        let key = (settings.full_order, settings.importance_batch);
        let mut full_ready = self.full_importance.contains_key(&key);
        let on_disk = self.cache.contains(&self.cache_name(settings, full_images));
        let mut base_ready = self.base_evaluation.is_some();
        let mut steps = Vec::new();
        for &class in classes {
            let forget_images = self.forget_indices(class.index()).len();
            let sample_images = forget_images.min(FORGET_SAMPLE_IMAGES);
            let evaluation = |model: &str| {
                let phases = EvaluationPhases::of(model);
                [(phases.test, self.test_indices.len()), (phases.train, self.train_indices.len()), (phases.forget_sample, sample_images)]
                    .map(|(phase, images)| Step::new(phase, images, FORWARD))
            };
            let mut phases = Vec::new();
            if !full_ready && on_disk {
                phases.push(Step::new(LOAD_FULL_IMPORTANCE, 1, IMPORTANCE_FILE_COST));
            } else if !full_ready {
                phases.push(Step::new(FULL_IMPORTANCE, full_images, FORWARD_AND_BACKWARD));
                phases.push(Step::new(STORE_FULL_IMPORTANCE, 1, IMPORTANCE_FILE_COST));
            }
            full_ready = true;
            phases.push(Step::new(FORGET_IMPORTANCE, forget_images, FORWARD_AND_BACKWARD));
            if settings.alpha == Alpha::Auto {
                phases.push(calibrate::plan(sample_images));
            }
            if !base_ready {
                phases.extend(evaluation(BASE));
                base_ready = true;
            } else if !self.base_forget_sample.contains_key(&class.index()) {
                phases.push(Step::new(EvaluationPhases::of(BASE).forget_sample, sample_images, FORWARD));
            }
            phases.extend(evaluation(UNLEARNED));
            if self.retrained.contains_key(&class.index()) {
                phases.extend(evaluation(RETRAINED));
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

    /// The full-set importance from the cache, or computed and then cached.
    fn load_or_compute_full_importance(
        &self,
        settings: &SsdSettings,
        progress: &mut dyn Progress,
    ) -> Result<(Importance<B::InnerBackend>, bool), UnlearnError> {
        let indices = self.full_indices(settings.full_order);
        let name = self.cache_name(settings, indices.len());
        if self.cache.contains(&name) {
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
        let full_set = Images { split: &self.data.train, indices: &indices };
        let full = importance(&self.model, full_set, settings.importance_batch, FULL_IMPORTANCE, &self.device.handle, progress)?;
        one_unit(STORE_FULL_IMPORTANCE, progress, || self.cache.put(&name, &full.to_state_dict()))?;
        Ok((full, false))
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use unlearn_shared::api::Preset;

    use super::*;
    use crate::engine::device::{CpuBackend, Processor};
    use crate::engine::progress::tests::Recorder;
    use crate::engine::progress::Planned;
    use crate::storage::dataset::{prepare, Source};
    use crate::storage::model_file::ModelFile;
    use crate::testing;

    /// Forgetting with a calibrated alpha on the tiny model, twice (the second time with the
    /// full-set importance and the base model's evaluation cached): every event counts
    /// towards a known total, and the run's fraction climbs to 1 without going back.
    #[test]
    fn every_phase_has_a_total_and_the_run_fraction_climbs_to_one() {
        let dir = testing::scratch_data_dir();
        let data = prepare(dir.path(), &Source::Npm).unwrap();
        let model = testing::tiny_model(dir.path(), "tiny");
        let cache = TensorCache::open(&dir.path().join("cache"), 1 << 30);
        let new_unlearner = || {
            let device = Device::<Autodiff<CpuBackend>> { handle: Default::default(), description: "cpu".into(), processor: Processor::Cpu };
            let base = BaseModel { name: "tiny".into(), digest: "0".repeat(64), weights: ModelFile::read(&model).unwrap().weights };
            let subsample = Subsample { forget: Some(32), full: Some(64), test: Some(50) };
            Unlearner::new(base, &data, subsample, &cache, device).unwrap()
        };
        let mut unlearner = new_unlearner();
        let settings = Preset::Default.settings();
        let class = ClassId::new(5).unwrap();
        for round in ["first", "cached"] {
            let plan = unlearner.plan(&[class], &settings, |_, phase| phase.to_owned());
            assert_eq!(plan.iter().any(|step| step.phase == FULL_IMPORTANCE), round == "first", "{round}: {plan:?}");
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
        // Another process finds the full-set importance in the cache.
        let phases: Vec<String> = new_unlearner().plan(&[class], &settings, |_, phase| phase.to_owned()).into_iter().map(|step| step.phase).collect();
        assert!(phases.contains(&LOAD_FULL_IMPORTANCE.to_owned()) && !phases.contains(&FULL_IMPORTANCE.to_owned()), "{phases:?}");
    }
}
