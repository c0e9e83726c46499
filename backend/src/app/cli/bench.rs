//! `backend bench`: images per second of the three hot paths, on random data.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Distribution;
use unlearn_shared::api::SgdConfig;
use unlearn_shared::model::{NormStats, ResNet, ResNetConfig};

use crate::engine::device::{Device, Workload};
use crate::engine::optim::Sgd;

#[derive(Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Timed repetitions of each measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 256)]
    train_batch: usize,
    #[arg(long, default_value_t = 1000)]
    forward_batch: usize,
    #[arg(long, default_value_t = 64)]
    importance_batch: usize,
    #[arg(long, default_value_t = 64)]
    width: usize,
}

fn random_batch<B: Backend>(size: usize, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let images = Tensor::random([size, 3, 32, 32], Distribution::Normal(0.0, 1.0), device);
    let labels = Tensor::<B, 1, Int>::random([size], Distribution::Uniform(0.0, 10.0), device);
    (images, labels)
}

/// Runs `step` once to warm up, then `steps` times; returns (warm-up seconds, images/s).
fn measure<B: Backend>(batch: usize, steps: usize, device: &B::Device, mut step: impl FnMut()) -> (f64, f64) {
    let started = Instant::now();
    step();
    B::sync(device).expect("device sync");
    let warm_up = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..steps {
        step();
    }
    B::sync(device).expect("device sync");
    (warm_up, (batch * steps) as f64 / started.elapsed().as_secs_f64())
}

impl Workload for BenchArgs {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: Device<B>) -> anyhow::Result<()> {
        let (device_name, device) = (device.description, device.handle);
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let mut model: Option<ResNet<B>> = Some(ResNetConfig::new().with_width(self.width).init(&device));
        println!("device {device_name}, width {}, {} timed steps each", self.width, self.steps);

        let mut sgd = Sgd::<B::InnerBackend>::new(SgdConfig::default());
        let (images, labels) = random_batch::<B>(self.train_batch, &device);
        let (warm, rate) = measure::<B>(self.train_batch, self.steps, &device, || {
            let current = model.take().expect("model present");
            let loss = loss_fn.forward(current.forward(images.clone(), NormStats::Batch), labels.clone());
            let grads = loss.backward();
            model = Some(sgd.step(current, &grads));
        });
        println!("train step     batch {:>5}: {rate:>9.1} img/s (warm-up {warm:.1} s)", self.train_batch);

        let model = model.expect("model present");
        let inference = model.valid();
        let (images, _) = random_batch::<B::InnerBackend>(self.forward_batch, &device);
        let (warm, rate) = measure::<B>(self.forward_batch, self.steps, &device, || {
            let _ = inference.forward(images.clone(), NormStats::Running);
        });
        println!("forward        batch {:>5}: {rate:>9.1} img/s (warm-up {warm:.1} s)", self.forward_batch);

        let (images, labels) = random_batch::<B>(self.importance_batch, &device);
        let (warm, rate) = measure::<B>(self.importance_batch, self.steps, &device, || {
            let loss = loss_fn.forward(model.forward(images.clone(), NormStats::Running), labels.clone());
            let grads = loss.backward();
            let _ = model.fc.weight.val().grad(&grads).map(|g| g.square());
        });
        println!("importance     batch {:>5}: {rate:>9.1} img/s (warm-up {warm:.1} s)", self.importance_batch);
        Ok(())
    }
}
