//! Selective Synaptic Dampening (Foster et al., 2024): parameters far more important to the
//! forget set than to the full training set are scaled down towards zero.

use std::time::{Duration, Instant};

use burn::module::Param;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use unlearn_shared::api::{DampenStats, SsdSettings};
use unlearn_shared::model::weights::{is_statistic, map_keyed, visit_keyed, KeyedMapper, KeyedVisitor, StateDict};
use unlearn_shared::model::ResNet;

use super::batch::labels;
use super::flat::{self, FlatTensors};
use super::progress::{Cancelled, PhaseTimer, Progress};
use super::scope::{reach, Reach};
use super::Inputs;

/// How often an importance pass reports at most.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Per-parameter importance: the mean over mini-batches of the squared gradient of the
/// batch-mean loss, flattened, by torchvision key. Running statistics have none.
pub(crate) struct Importance<B: Backend> {
    pub(crate) tensors: FlatTensors<B>,
}

struct AccumulateSquares<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    sums: &'a mut FlatTensors<B::InnerBackend>,
}

impl<B: AutodiffBackend> KeyedVisitor<B> for AccumulateSquares<'_, B> {
    fn visit<const D: usize>(&mut self, key: &str, param: &Param<Tensor<B, D>>) {
        if is_statistic(key) {
            return;
        }
        let Some(grad) = param.val().grad(self.grads) else { return };
        let square = grad.square().reshape([-1]);
        let sum = match self.sums.remove(key) {
            Some(sum) => sum + square,
            None => square,
        };
        self.sums.insert(key.to_owned(), sum);
    }
}

/// Computes the importance over `inputs`, in their order, in mini-batches of `batch_size`,
/// BatchNorm in inference mode; progress is reported as `phase`. It covers the parameters
/// the inputs reach: all of them from images, `fc` alone from features.
pub(crate) fn importance<B: AutodiffBackend>(
    model: &ResNet<B>,
    inputs: impl Inputs,
    batch_size: usize,
    phase: &str,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Importance<B::InnerBackend>, Cancelled> {
    let images = inputs.images();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut sums = FlatTensors::new();
    let mut timer = PhaseTimer::start(phase, images.indices.len() as u64, progress);
    let batches = images.indices.len().div_ceil(batch_size).max(1);
    let mut reported = Instant::now();
    for (n, chunk) in images.indices.chunks(batch_size).enumerate() {
        if progress.cancelled() {
            return Err(Cancelled);
        }
        let loss = loss_fn.forward(inputs.logits(model, chunk, device), labels::<B>(images.split, chunk, device));
        let grads = loss.backward();
        visit_keyed(model, &mut AccumulateSquares::<B> { grads: &grads, sums: &mut sums });
        // Reading the loss waits for the device: only as often as a display needs it.
        if reported.elapsed() >= REPORT_EVERY || n + 1 == batches {
            timer.add_loss(loss.into_scalar().elem::<f64>());
            progress.report(&timer.event((n * batch_size + chunk.len()) as u64));
            reported = Instant::now();
        }
    }
    let tensors: FlatTensors<_> = sums.into_iter().map(|(key, sum)| (key, sum / batches as f64)).collect();
    assert!(!tensors.is_empty() || images.indices.is_empty(), "the inputs reach some parameter");
    Ok(Importance { tensors })
}

impl<B: Backend> Importance<B> {
    pub(crate) fn to_state_dict(&self) -> StateDict {
        flat::to_state_dict(&self.tensors)
    }

    pub(crate) fn from_state_dict(tensors: StateDict, device: &B::Device) -> Self {
        Self { tensors: flat::from_state_dict(tensors, device) }
    }
}

/// What SSD weighs against each other: one class's importance and the full training set's.
pub(crate) struct Importances<'a, B: Backend> {
    pub(crate) class: usize,
    pub(crate) forget: &'a Importance<B>,
    pub(crate) full: &'a Importance<B>,
}

struct Dampen<'a, B: Backend> {
    importances: &'a Importances<'a, B>,
    alpha: f64,
    settings: &'a SsdSettings,
    stats: DampenStats,
}

impl<B: Backend> Dampen<'_, B> {
    /// The elements of a flat `fc` tensor that feed the forget class's logit. Both are flat in
    /// Burn's layout, class fastest: `fc.weight` is `[features, classes]`, `fc.bias` `[classes]`.
    fn forget_class_row(&self, len: usize, device: &B::Device) -> Tensor<B, 1, Bool> {
        let classes = self.importances.full.tensors["fc.bias"].shape().num_elements();
        let row: Vec<bool> = (0..len).map(|i| i % classes == self.importances.class).collect();
        Tensor::from_data(TensorData::new(row, [len]), device)
    }
}

impl<B: Backend> KeyedMapper<B> for Dampen<'_, B> {
    fn map<const D: usize>(&mut self, key: &str, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if is_statistic(key) {
            return param;
        }
        let len = param.shape().num_elements();
        self.stats.total += len as u64;
        let reach = reach(self.settings.layers, key);
        if reach == Reach::Nothing {
            return param;
        }
        let (Some(forget), Some(full)) = (self.importances.forget.tensors.get(key), self.importances.full.tensors.get(key)) else {
            panic!("no importance of {key}, which {:?} reaches", self.settings.layers);
        };
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let mut selected = forget.clone().greater(full.clone() * self.alpha);
        if reach == Reach::ForgetClassRow {
            selected = selected.bool_and(self.forget_class_row(len, &forget.device()));
        }
        let beta = (full.clone() * self.settings.lambda / forget.clone()).clamp_max(1.0);
        let factor = Tensor::ones_like(&beta).mask_where(selected.clone(), beta);
        self.stats.selected += selected.int().sum().into_scalar().elem::<i64>() as u64;
        Param::from_mapped_value(id, tensor * factor.reshape(shape), mapper)
    }
}

/// Scales each parameter within `settings.layers` where `imp_forget > alpha * imp_full` by
/// `min(lambda * imp_full / imp_forget, 1)`; BatchNorm running statistics are never touched.
/// `alpha` is given apart from the settings because they may leave it to calibration.
pub(crate) fn dampen<B: Backend>(model: ResNet<B>, importances: &Importances<B>, alpha: f64, settings: &SsdSettings) -> (ResNet<B>, DampenStats) {
    let mut mapper = Dampen { importances, alpha, settings, stats: DampenStats { selected: 0, total: 0 } };
    let model = map_keyed(model, &mut mapper);
    (model, mapper.stats)
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use unlearn_shared::api::{Alpha, Layers, SetOrder};
    use unlearn_shared::cifar::IMAGE_BYTES;
    use unlearn_shared::model::weights::export;
    use unlearn_shared::model::{NormStats, ResNetConfig};

    use super::*;
    use crate::engine::batch::batch;
    use crate::engine::device::CpuBackend as Cpu;
    use crate::engine::progress::Silent;
    use crate::engine::Images;
    use crate::storage::dataset::Split;

    const FORGET_PATTERN: [f32; 5] = [0.5, 10.0, 11.0, 20.0, 100.0];

    /// Full importance 1 everywhere; forget importance cycling through `FORGET_PATTERN`.
    fn hand_made(model: &ResNet<Cpu>) -> (Importance<Cpu>, Importance<Cpu>) {
        let device = Default::default();
        let (mut forget, mut full) = (FlatTensors::new(), FlatTensors::new());
        for (key, tensor) in export(model).into_iter().filter(|(key, _)| !is_statistic(key)) {
            let n = tensor.values.len();
            let pattern: Vec<f32> = (0..n).map(|i| FORGET_PATTERN[i % 5]).collect();
            forget.insert(key.clone(), Tensor::from_data(TensorData::new(pattern, [n]), &device));
            full.insert(key, Tensor::ones([n], &device));
        }
        (Importance { tensors: forget }, Importance { tensors: full })
    }

    /// The forget importance of element `j` of an exported tensor. Importances are flat in
    /// Burn's layout, which for `fc.weight` is the transpose of torchvision's.
    fn forget_importance(key: &str, shape: &[usize], j: usize) -> f32 {
        let i = if key == "fc.weight" { (j % shape[1]) * shape[0] + j / shape[1] } else { j };
        FORGET_PATTERN[i % 5]
    }

    fn settings(lambda: f64, layers: Layers) -> SsdSettings {
        SsdSettings { alpha: Alpha::Auto, lambda, layers, importance_batch: 2, full_order: SetOrder::ClassOrdered }
    }

    #[test]
    fn dampening_selects_and_scales_as_the_formula_says() {
        let model = ResNetConfig::new().with_width(2).init::<Cpu>(&Default::default());
        let before = export(&model);
        let (forget, full) = hand_made(&model);
        let (after, stats) = dampen(model, &Importances { class: 3, forget: &forget, full: &full }, 10.0, &settings(1.0, Layers::All));
        let after = export(&after);

        let mut expected_selected = 0;
        for (key, old) in &before {
            let new = &after[key];
            if is_statistic(key) {
                assert_eq!(old, new, "{key}: running statistics are never dampened");
                continue;
            }
            for (i, (o, n)) in old.values.iter().zip(&new.values).enumerate() {
                let imp_forget = forget_importance(key, &old.shape, i);
                // Selected where imp_forget > 10 * 1; beta = min(1 * 1 / imp_forget, 1).
                let expected = if imp_forget > 10.0 {
                    expected_selected += 1;
                    o / imp_forget
                } else {
                    *o
                };
                assert!((n - expected).abs() <= 1e-6 * o.abs().max(1.0), "{key}[{i}]: {o} became {n}, expected {expected}");
                assert!(n.abs() <= o.abs(), "{key}[{i}] grew from {o} to {n}");
            }
        }
        assert_eq!(stats.selected, expected_selected);
        assert_eq!(stats.total as usize, unlearn_shared::model::weights::parameter_count(&ResNetConfig::new().with_width(2).init::<Cpu>(&Default::default())));
    }

    #[test]
    fn narrow_scopes_dampen_only_the_forget_class_row_of_the_classifier() {
        let class = 3;
        for layers in [Layers::Classifier, Layers::LastStage] {
            let model = ResNetConfig::new().with_width(2).init::<Cpu>(&Default::default());
            let before = export(&model);
            let (forget, full) = hand_made(&model);
            let (after, stats) = dampen(model, &Importances { class, forget: &forget, full: &full }, 10.0, &settings(1.0, layers));
            let after = export(&after);
            let mut changed_in_row = 0;
            for (key, old) in &before {
                // Exported in torchvision's layout: `fc.weight` is [classes, features].
                let row_len = if key == "fc.weight" { old.shape[1] } else { 1 };
                for (j, (o, n)) in old.values.iter().zip(&after[key].values).enumerate() {
                    if o == n {
                        continue;
                    }
                    match reach(layers, key) {
                        Reach::ForgetClassRow => assert_eq!(j / row_len, class, "{layers:?}: {key}[{j}] is in another class's row"),
                        Reach::Whole => assert!(key.starts_with("layer4."), "{layers:?}: {key}"),
                        Reach::Nothing => panic!("{layers:?}: {key}[{j}] is out of scope"),
                    }
                    changed_in_row += usize::from(key.starts_with("fc."));
                }
            }
            assert!(changed_in_row > 0, "{layers:?}: the forget class's row is dampened");
            assert!(stats.selected > 0 && stats.selected < stats.total, "{stats:?}");
            assert_eq!(
                stats.total as usize,
                unlearn_shared::model::weights::parameter_count(&ResNetConfig::new().with_width(2).init::<Cpu>(&Default::default()))
            );
        }
    }

    #[test]
    fn a_strong_lambda_never_grows_a_parameter() {
        let model = ResNetConfig::new().with_width(2).init::<Cpu>(&Default::default());
        let before = export(&model);
        let (forget, full) = hand_made(&model);
        // lambda 50: beta = min(50 / imp_forget, 1) is 1 for 11 and 20, 0.5 for 100.
        let (after, stats) = dampen(model, &Importances { class: 3, forget: &forget, full: &full }, 10.0, &settings(50.0, Layers::All));
        let after = export(&after);
        for (key, old) in before.iter().filter(|(key, _)| !is_statistic(key)) {
            for (i, (o, n)) in old.values.iter().zip(&after[key].values).enumerate() {
                let expected = if forget_importance(key, &old.shape, i) == 100.0 { o * 0.5 } else { *o };
                assert!((n - expected).abs() <= 1e-6 * o.abs().max(1.0), "{key}[{i}]");
            }
        }
        assert!(stats.selected > 0);
    }

    #[test]
    fn importance_is_the_mean_over_batches_of_squared_gradients() {
        type A = Autodiff<Cpu>;
        let device = Default::default();
        let model = ResNetConfig::new().with_width(2).init::<A>(&device);
        let split = Split { images: (0..3 * IMAGE_BYTES).map(|i| (i * 37 % 256) as u8).collect(), labels: vec![1, 4, 7] };
        // Batches of two: {0, 1} and {2}.
        let imp = importance(&model, Images { split: &split, indices: &[0, 1, 2] }, 2, "test", &device, &mut Silent).unwrap();

        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let squared_grad = |indices: &[usize]| {
            let batch = batch::<A>(&split, indices, &device);
            let grads = loss_fn.forward(model.forward(batch.images, NormStats::Running), batch.labels).backward();
            model.fc.weight.val().grad(&grads).unwrap().square().into_data().to_vec::<f32>().unwrap()
        };
        let (a, b) = (squared_grad(&[0, 1]), squared_grad(&[2]));
        // fc.weight is stored [in, out]; the importance is keyed and laid out as Burn holds it.
        let got = imp.tensors["fc.weight"].clone().into_data().to_vec::<f32>().unwrap();
        assert_eq!(got.len(), a.len());
        for i in 0..got.len() {
            let expected = (a[i] + b[i]) / 2.0;
            assert!((got[i] - expected).abs() <= 1e-6 + 1e-4 * expected.abs(), "[{i}] {} vs {expected}", got[i]);
        }
        assert!(got.iter().any(|&v| v > 0.0), "gradients reach the classifier");
        assert!(!imp.tensors.keys().any(|key| is_statistic(key)), "statistics have no importance");
    }
}
