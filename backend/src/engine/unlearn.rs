//! Forgetting one class of a trained model with SSD, and measuring what changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use unlearn_shared::api::{Alpha, Membership, ModelReport, RetrainedReport, SetOrder, SsdSettings, Subsample, Timings, UnlearnReport};
use unlearn_shared::metrics::{Evaluation, MembershipAttack};
use unlearn_shared::model::weights::{self, Metadata, Precision, WeightsError};
use unlearn_shared::model::ResNet;

use super::calibrate::{calibrate, CalibrationConfig};
use super::evaluate::evaluate;
use super::progress::{Cancelled, Progress};
use super::sample;
use super::ssd::{dampen, importance, Importance, Importances};
use crate::data::Cifar10;
use crate::files::write_atomic;
use crate::models::ModelFile;

/// Seed of the subsets drawn when a run is subsampled.
const SUBSAMPLE_SEED: u64 = 0;
/// Part of every importance cache name; bump it when the importance computation changes.
const IMPORTANCE_CACHE_VERSION: u32 = 1;
/// Forget-set images that calibration and the membership attack classify.
const PROBE_IMAGES: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum UnlearnError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("forget class {0} does not exist; classes are 0..=9")]
    Class(usize),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    #[error("importance cache {path}: {error}")]
    Cache { path: PathBuf, error: std::io::Error },
}

/// One model on the sets every report reads.
struct Measured {
    test: Evaluation,
    train: Evaluation,
    /// Images of the forget class from its training set.
    probe: Evaluation,
}

impl Measured {
    fn report(&self, class: usize) -> ModelReport {
        ModelReport::new(&self.test, &self.train, class)
    }

    /// The membership attack, fitted on retain-class training images against test images,
    /// asked about the probe.
    fn member_percent(&self, class: usize) -> f64 {
        let attack = MembershipAttack::fit(&self.train.entropies(|c| c != class), &self.test.entropies(|_| true));
        attack.member_percent(&self.probe.entropies(|c| c == class))
    }
}

/// One base model on one device, ready to forget any class. Keeps what does not depend on
/// the class: the full-set importances (also cached on disk) and the base model's evaluation.
pub struct Unlearner<'a, B: AutodiffBackend> {
    data: &'a Cifar10,
    model_name: String,
    digest: String,
    model: ResNet<B>,
    device: B::Device,
    device_name: String,
    cache_dir: PathBuf,
    subsample: Subsample,
    test_indices: Vec<usize>,
    /// A training subset as large as the test subset, for the same metrics on seen images.
    train_indices: Vec<usize>,
    base_evaluation: Option<(Evaluation, Evaluation)>,
    /// The base model on each class's probe images.
    base_probe: HashMap<usize, Evaluation>,
    /// Models of the same recipe trained without a class, by that class, with their names.
    retrained: HashMap<usize, (String, ResNet<B::InnerBackend>)>,
    full_importance: HashMap<(SetOrder, usize), Importance<B::InnerBackend>>,
}

impl<'a, B: AutodiffBackend> Unlearner<'a, B> {
    pub fn new(
        file: &ModelFile,
        model_name: impl Into<String>,
        data: &'a Cifar10,
        subsample: Subsample,
        cache_dir: &Path,
        device: B::Device,
        device_name: impl Into<String>,
    ) -> Result<Self, WeightsError> {
        let model = weights::model_from_state_dict::<B>(file.weights.clone(), &device)?;
        Ok(Self {
            data,
            model_name: model_name.into(),
            digest: file.digest(),
            model,
            device,
            device_name: device_name.into(),
            cache_dir: cache_dir.to_owned(),
            subsample,
            test_indices: sample((0..data.test.len()).collect(), subsample.test, SUBSAMPLE_SEED),
            train_indices: sample((0..data.train.len()).collect(), Some(subsample.test.unwrap_or(data.test.len())), SUBSAMPLE_SEED),
            base_evaluation: None,
            base_probe: HashMap::new(),
            retrained: HashMap::new(),
            full_importance: HashMap::new(),
        })
    }

    /// Compares every run forgetting `class` with `file`, a model trained without it.
    pub fn add_retrained(&mut self, class: usize, name: impl Into<String>, file: &ModelFile) -> Result<(), WeightsError> {
        let model = weights::model_from_state_dict::<B::InnerBackend>(file.weights.clone(), &self.device)?;
        self.retrained.insert(class, (name.into(), model));
        Ok(())
    }

    /// sha256 of the base model's weights.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Forgets `class`; returns the report and the unlearned model.
    pub fn forget(
        &mut self,
        class: usize,
        settings: &SsdSettings,
        progress: &mut dyn Progress,
    ) -> Result<(UnlearnReport, ResNet<B::InnerBackend>), UnlearnError> {
        settings.validate().map_err(UnlearnError::Settings)?;
        if class >= unlearn_shared::cifar::NUM_CLASSES {
            return Err(UnlearnError::Class(class));
        }
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
        let forget_indices = sample(self.data.train.indices_of(class), self.subsample.forget, SUBSAMPLE_SEED);
        let forget = importance(&self.model, &self.data.train, &forget_indices, settings.importance_batch, "importance (forget set)", &self.device, progress)?;
        timings.forget_importance_s = started.elapsed().as_secs_f64();

        let probe = sample(forget_indices.clone(), Some(PROBE_IMAGES), SUBSAMPLE_SEED);
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
                let found = calibrate(&self.model.valid(), &importances, settings, &config, &self.data.train, &probe, &self.device, progress)?;
                timings.calibrate_s = started.elapsed().as_secs_f64();
                (found.model, found.alpha, found.layers, Some(found.calibration), found.dampened)
            }
        };

        let started = Instant::now();
        let (test, train) = self.base_evaluation(progress)?.clone();
        let before = Measured { test, train, probe: self.base_probe(class, &probe, progress)? };
        let after = self.measure(&unlearned, &probe, progress)?;
        timings.evaluate_s = started.elapsed().as_secs_f64();

        let retrained = match self.retrained.get(&class) {
            Some((name, model)) => {
                let measured = self.measure(model, &probe, progress)?;
                Some(RetrainedReport { model: name.clone(), report: measured.report(class), membership: measured.member_percent(class) })
            }
            None => None,
        };
        let membership = Membership { before: before.member_percent(class), after: after.member_percent(class), images: probe.len() };
        let report = UnlearnReport {
            model: self.model_name.clone(),
            device: self.device_name.clone(),
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
            retrained,
        };
        Ok((report, unlearned))
    }

    /// The base model on the probe images of `class`, evaluated once per class.
    fn base_probe(&mut self, class: usize, probe: &[usize], progress: &mut dyn Progress) -> Result<Evaluation, Cancelled> {
        if let Some(evaluation) = self.base_probe.get(&class) {
            return Ok(evaluation.clone());
        }
        let evaluation = evaluate(&self.model.valid(), &self.data.train, probe, &self.device, progress)?;
        self.base_probe.insert(class, evaluation.clone());
        Ok(evaluation)
    }

    /// On the test subset, the training subset and the probe of the forget set.
    fn measure(&self, model: &ResNet<B::InnerBackend>, probe: &[usize], progress: &mut dyn Progress) -> Result<Measured, Cancelled> {
        let (test, train) = self.evaluate_both(model, progress)?;
        Ok(Measured { test, train, probe: evaluate(model, &self.data.train, probe, &self.device, progress)? })
    }

    /// On the test subset and on the training subset.
    fn evaluate_both(&self, model: &ResNet<B::InnerBackend>, progress: &mut dyn Progress) -> Result<(Evaluation, Evaluation), Cancelled> {
        Ok((
            evaluate(model, &self.data.test, &self.test_indices, &self.device, progress)?,
            evaluate(model, &self.data.train, &self.train_indices, &self.device, progress)?,
        ))
    }

    fn base_evaluation(&mut self, progress: &mut dyn Progress) -> Result<&(Evaluation, Evaluation), Cancelled> {
        if self.base_evaluation.is_none() {
            self.base_evaluation = Some(self.evaluate_both(&self.model.valid(), progress)?);
        }
        Ok(self.base_evaluation.as_ref().expect("just computed"))
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

    fn cache_path(&self, settings: &SsdSettings, images: usize) -> PathBuf {
        let order = match settings.full_order {
            SetOrder::ClassOrdered => "ordered".to_owned(),
            SetOrder::Shuffled { seed } => format!("shuffled{seed}"),
        };
        self.cache_dir.join(format!(
            "importance-v{IMPORTANCE_CACHE_VERSION}-{}-{order}-b{}-n{images}.safetensors",
            &self.digest[..16],
            settings.importance_batch
        ))
    }

    /// The full-set importance from the disk cache, or computed and then cached.
    fn load_or_compute_full_importance(
        &self,
        settings: &SsdSettings,
        progress: &mut dyn Progress,
    ) -> Result<(Importance<B::InnerBackend>, bool), UnlearnError> {
        let indices = self.full_indices(settings.full_order);
        let path = self.cache_path(settings, indices.len());
        // A cache entry that is unreadable or does not cover every parameter is recomputed.
        let sizes = weights::parameter_sizes(&self.model);
        let cached = std::fs::read(&path).ok().and_then(|bytes| weights::decode(&bytes).ok()).map(|(tensors, _)| tensors);
        if let Some(tensors) = cached.filter(|t| t.len() == sizes.len() && t.iter().all(|(k, v)| sizes.get(k) == Some(&v.values.len()))) {
            return Ok((Importance::from_state_dict(tensors, &self.device), true));
        }
        let full = importance(&self.model, &self.data.train, &indices, settings.importance_batch, "importance (full set)", &self.device, progress)?;
        let bytes = weights::encode(&full.to_state_dict(), Metadata::new(), Precision::F32);
        let io = |error| UnlearnError::Cache { path: path.clone(), error };
        std::fs::create_dir_all(&self.cache_dir).map_err(io)?;
        write_atomic(&path, &bytes).map_err(io)?;
        Ok((full, false))
    }
}
