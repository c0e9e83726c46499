//! The model's structure, its BatchNorm modes and its weight format.

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::prelude::*;
use unlearn_shared::model::weights::{self, decode, encode, export, import, Metadata, Precision, WeightsError};
use unlearn_shared::model::{BatchNormConfig, NormStats, ResNetConfig, RESNET18_PARAMETERS};

type B = Flex;

fn device() -> burn::backend::flex::FlexDevice {
    Default::default()
}

#[test]
fn resnet18_has_torchvisions_parameter_count_and_keys() {
    let model = ResNetConfig::new().init::<B>(&device());
    assert_eq!(weights::parameter_count(&model), RESNET18_PARAMETERS);
    let dict = export(&model);
    // 62 trainable tensors and 40 running statistics; torchvision adds 20 num_batches_tracked.
    assert_eq!(dict.len(), 102);
    assert_eq!(dict["fc.weight"].shape, vec![10, 512], "torchvision's [out, in] layout");
    assert_eq!(dict["layer2.0.downsample.0.weight"].shape, vec![128, 64, 1, 1]);
    assert_eq!(dict["layer4.1.bn2.running_var"].shape, vec![512]);
    assert!(!dict.contains_key("layer1.0.downsample.0.weight"), "layer1 keeps its shape");
}

#[test]
fn logits_have_one_row_per_image() {
    let model = ResNetConfig::new().with_width(4).init::<B>(&device());
    let logits = model.forward(Tensor::zeros([3, 3, 32, 32], &device()), NormStats::Running);
    assert_eq!(logits.dims(), [3, 10]);
}

#[test]
fn weights_round_trip_through_safetensors_in_both_precisions() {
    let model = ResNetConfig::new().with_width(4).init::<B>(&device());
    let mut dict = export(&model);
    // A running variance f16 cannot hold (its smallest subnormal is 6e-8).
    dict.get_mut("bn1.running_var").unwrap().values[0] = 3e-8;
    let meta = Metadata::from([("k".to_owned(), "v".to_owned())]);

    let (back, back_meta) = decode(&encode(&dict, meta.clone(), Precision::F32)).unwrap();
    assert_eq!(back, dict);
    assert_eq!(back_meta, meta);

    let (half, _) = decode(&encode(&dict, meta, Precision::Half)).unwrap();
    for (key, tensor) in &dict {
        if weights::is_statistic(key) {
            assert_eq!(half[key], *tensor, "{key}: running statistics stay f32");
            continue;
        }
        let worst = tensor.values.iter().zip(&half[key].values).map(|(a, b)| (a - b).abs() / a.abs().max(1e-3)).fold(0.0, f32::max);
        assert!(worst < 1e-3, "{key}: f16 relative error {worst}");
    }

    let reloaded = weights::model_from_state_dict::<B>(back, &device()).unwrap();
    assert_eq!(export(&reloaded), dict);
    assert_eq!(reloaded.config(), ResNetConfig::new().with_width(4));
}

#[test]
fn weights_written_to_a_file_are_the_encoded_bytes() {
    let mut dict = export(&ResNetConfig::new().with_width(4).init::<B>(&device()));
    // A value f16 cannot hold exactly, so that the two precisions' files differ.
    dict.get_mut("fc.bias").unwrap().values[0] = -1.5e-7;
    let meta = Metadata::from([("k".to_owned(), "v".to_owned())]);
    let path = std::env::temp_dir().join(format!("unlearn-weights-test-{}.safetensors", std::process::id()));
    for precision in [Precision::F32, Precision::Half] {
        weights::write(&dict, meta.clone(), precision, &path).unwrap();
        let written = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(written, encode(&dict, meta.clone(), precision), "{precision:?}");
    }
    let missing = std::env::temp_dir().join(format!("unlearn-no-such-folder-{}", std::process::id())).join("entry.safetensors");
    let error = weights::write(&dict, meta, Precision::F32, &missing).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
}

#[test]
fn mismatched_checkpoints_list_every_problem() {
    let model = ResNetConfig::new().with_width(4).init::<B>(&device());
    let mut dict = export(&model);
    dict.remove("layer1.0.conv1.weight");
    dict.get_mut("bn1.weight").unwrap().shape = vec![5];
    dict.insert("head.weight".into(), dict["fc.bias"].clone());
    let error = import(ResNetConfig::new().with_width(4).init::<B>(&device()), dict).unwrap_err().to_string();
    assert!(error.contains("missing   layer1.0.conv1.weight"), "{error}");
    assert!(error.contains("shape     bn1.weight: checkpoint [5], model [4]"), "{error}");
    assert!(error.contains("unexpected head.weight"), "{error}");
}

#[test]
fn foreign_and_damaged_files_are_rejected() {
    let model = ResNetConfig::new().with_width(4).init::<B>(&device());
    let bytes = encode(&export(&model), Metadata::new(), Precision::F32);
    assert!(matches!(decode(&bytes[..bytes.len() - 7]), Err(WeightsError::Format(_))), "truncated");
    assert!(matches!(decode(b"PK\x03\x04 a zip file"), Err(WeightsError::Format(_))), "not safetensors");

    let mut dict = export(&model);
    dict.remove("conv1.weight");
    let error = weights::model_from_state_dict::<B>(dict, &device()).unwrap_err();
    assert!(matches!(error, WeightsError::Architecture(_)), "{error}");

    let mut dict = export(&model);
    dict.get_mut("fc.bias").unwrap().values[0] = f32::NAN;
    let error = decode(&encode(&dict, Metadata::new(), Precision::F32)).unwrap_err().to_string();
    assert!(error.contains("fc.bias") && error.contains("non-finite"), "{error}");
}

#[test]
fn batch_norm_modes_use_the_statistics_they_name() {
    let bn = BatchNormConfig::new(1).init::<B>(&device());
    bn.running_mean.update(Tensor::from_floats([10.0], &device()));
    bn.running_var.update(Tensor::from_floats([4.0], &device()));
    let _ = bn.running_mean.value_sync();
    let _ = bn.running_var.value_sync();
    // Four values, mean 2.5, biased variance 1.25, unbiased 5/3.
    let input = Tensor::<B, 4>::from_floats([[[[1.0, 2.0], [3.0, 4.0]]]], &device());

    let running: Vec<f32> = bn.forward(input.clone(), NormStats::Running).into_data().to_vec().unwrap();
    let expected = |x: f32| (x - 10.0) / (4.0f32 + 1e-5).sqrt();
    for (got, x) in running.iter().zip([1.0, 2.0, 3.0, 4.0]) {
        assert!((got - expected(x)).abs() < 1e-5);
    }
    assert_eq!(bn.running_mean.value().into_scalar(), 10.0, "inference leaves statistics alone");

    let batch: Vec<f32> = bn.forward(input, NormStats::Batch).into_data().to_vec().unwrap();
    for (got, x) in batch.iter().zip([1.0f32, 2.0, 3.0, 4.0]) {
        assert!((got - (x - 2.5) / (1.25f32 + 1e-5).sqrt()).abs() < 1e-4);
    }
    let mean = bn.running_mean.value_sync().into_scalar();
    let var = bn.running_var.value_sync().into_scalar();
    assert!((mean - (0.9 * 10.0 + 0.1 * 2.5)).abs() < 1e-5, "running mean {mean}");
    assert!((var - (0.9 * 4.0 + 0.1 * 5.0 / 3.0)).abs() < 1e-5, "running var {var} uses the unbiased batch variance");
}

/// Several images and channels, so that a statistic taken over the wrong axis shows.
#[test]
fn batch_norm_normalises_each_channel_over_every_image_and_pixel() {
    let (batch, channels, pixels) = (3, 2, 4);
    let values: Vec<f32> = (0..batch * channels * pixels).map(|i| ((i * 7) % 11) as f32 + i as f32 / 5.0).collect();
    let value = |n: usize, c: usize, p: usize| values[(n * channels + c) * pixels + p] as f64;
    let per_channel = |c: usize| (0..batch).flat_map(move |n| (0..pixels).map(move |p| value(n, c, p)));
    let count = (batch * pixels) as f64;
    let mean: Vec<f64> = (0..channels).map(|c| per_channel(c).sum::<f64>() / count).collect();
    let var: Vec<f64> = (0..channels).map(|c| per_channel(c).map(|x| (x - mean[c]).powi(2)).sum::<f64>() / count).collect();

    let bn = BatchNormConfig::new(channels).init::<B>(&device());
    let input = Tensor::<B, 1>::from_floats(values.as_slice(), &device()).reshape([batch, channels, 2, 2]);
    let output: Vec<f32> = bn.forward(input, NormStats::Batch).into_data().to_vec().unwrap();
    for n in 0..batch {
        for c in 0..channels {
            for p in 0..pixels {
                let expected = (value(n, c, p) - mean[c]) / (var[c] + 1e-5).sqrt();
                let got = output[(n * channels + c) * pixels + p] as f64;
                assert!((got - expected).abs() < 1e-4, "image {n} channel {c} pixel {p}: {got} vs {expected}");
            }
        }
    }
    let running_mean: Vec<f32> = bn.running_mean.value_sync().into_data().to_vec().unwrap();
    let running_var: Vec<f32> = bn.running_var.value_sync().into_data().to_vec().unwrap();
    for c in 0..channels {
        assert!((running_mean[c] as f64 - 0.1 * mean[c]).abs() < 1e-4, "channel {c}: running mean {}", running_mean[c]);
        let unbiased = var[c] * count / (count - 1.0);
        assert!((running_var[c] as f64 - (0.9 + 0.1 * unbiased)).abs() < 1e-3, "channel {c}: running var {}", running_var[c]);
    }
}

#[test]
fn inference_mode_still_gives_gradients_under_autodiff() {
    type A = Autodiff<B>;
    let bn = BatchNormConfig::new(2).init::<A>(&device());
    let input = Tensor::<A, 4>::ones([3, 2, 2, 2], &device());
    let grads = bn.forward(input, NormStats::Running).sum().backward();
    let weight: &Param<Tensor<A, 1>> = &bn.weight;
    let grad = weight.val().grad(&grads).expect("weight has a gradient");
    assert_eq!(grad.into_data().to_vec::<f32>().unwrap(), vec![12.0 / (1.0f32 + 1e-5).sqrt(); 2]);
}

#[test]
fn imported_parameters_stay_trainable() {
    type A = Autodiff<B>;
    let source = ResNetConfig::new().with_width(2).init::<B>(&device());
    let model = weights::model_from_state_dict::<A>(export(&source), &device()).unwrap();
    let logits = model.forward(Tensor::ones([1, 3, 32, 32], &device()), NormStats::Running);
    let grads = logits.sum().backward();
    assert!(model.conv1.weight.val().grad(&grads).is_some(), "imported weights receive gradients");
    assert!(model.fc.weight.val().grad(&grads).is_some());
}

#[test]
fn classify_normalises_like_training_and_gives_probabilities() {
    let model = ResNetConfig::new().with_width(4).init::<B>(&device());
    let images: Vec<u8> = (0..2 * unlearn_shared::cifar::IMAGE_BYTES).map(|i| (i * 7 % 256) as u8).collect();
    let probabilities = model.classify(&images, &device());
    assert_eq!(probabilities.dims(), [2, 10]);
    let sums = probabilities.clone().sum_dim(1).into_data().to_vec::<f32>().unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "{sums:?}");

    let mut normalised = Vec::new();
    for image in images.chunks_exact(unlearn_shared::cifar::IMAGE_BYTES) {
        unlearn_shared::cifar::normalize_into(image, &mut normalised);
    }
    let logits = model.forward(Tensor::<B, 1>::from_floats(normalised.as_slice(), &device()).reshape([2, 3, 32, 32]), NormStats::Running);
    let expected = burn::tensor::activation::softmax(logits, 1).into_data().to_vec::<f32>().unwrap();
    let got = probabilities.into_data().to_vec::<f32>().unwrap();
    assert!(expected.iter().zip(&got).all(|(a, b)| (a - b).abs() < 1e-6));
}
