//! The imported PyTorch checkpoint reproduces PyTorch's numbers.

mod common;

use unlearn_backend::data;
use unlearn_backend::device::CpuBackend;
use unlearn_backend::engine::batch::make_batch;
use unlearn_backend::models::ModelFile;
use unlearn_shared::model::{weights, NormStats};

#[derive(serde::Deserialize)]
struct ReferenceLogits {
    labels: Vec<usize>,
    logits: Vec<Vec<f32>>,
}

#[test]
fn imported_checkpoint_matches_reference_logits() {
    let reference: ReferenceLogits = serde_json::from_slice(
        &std::fs::read(common::workspace().join("../shared/models/reference-logits-test256.json")).unwrap(),
    )
    .unwrap();
    let test = data::load_test(&common::real_data_dir()).unwrap();
    let file = ModelFile::read(&common::reference_checkpoint()).unwrap();
    let device = Default::default();
    let model = weights::model_from_state_dict::<CpuBackend>(file.weights, &device).unwrap();

    let indices: Vec<usize> = (0..reference.logits.len()).collect();
    assert_eq!(indices.len(), 256);
    let labels: Vec<usize> = indices.iter().map(|&i| test.label(i)).collect();
    assert_eq!(labels, reference.labels, "test images are in the reference's order");

    let batch = make_batch::<CpuBackend>(&test, &indices, None::<&mut rand_chacha::ChaCha8Rng>, &device);
    let logits = model.forward(batch.images, NormStats::Running).into_data().to_vec::<f32>().unwrap();
    let mut worst = 0.0f32;
    let mut correct = 0;
    for ((row, expected), label) in logits.chunks(10).zip(&reference.logits).zip(&labels) {
        worst = row.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        let predicted = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        correct += usize::from(predicted == *label);
    }
    println!("max |logit - reference| = {worst:e}");
    assert!(worst <= 1e-3, "max abs logit difference {worst}");
    assert_eq!(correct, 225, "the reference classifies 225 of 256 correctly");
}
