//! Per-parameter tensors kept flat and keyed by torchvision key (importances, momentum),
//! and their conversion to the safetensors-ready [`StateDict`].

use std::collections::BTreeMap;

use burn::prelude::*;
use unlearn_shared::model::weights::{NamedTensor, StateDict};

pub(crate) type FlatTensors<B> = BTreeMap<String, Tensor<B, 1>>;

pub(crate) fn to_state_dict<B: Backend>(tensors: &FlatTensors<B>) -> StateDict {
    tensors
        .iter()
        .map(|(key, tensor)| {
            let values = tensor.clone().into_data().convert::<f32>().to_vec::<f32>().expect("float data");
            (key.clone(), NamedTensor { shape: vec![values.len()], values })
        })
        .collect()
}

pub(crate) fn from_state_dict<B: Backend>(tensors: StateDict, device: &B::Device) -> FlatTensors<B> {
    tensors
        .into_iter()
        .map(|(key, named)| {
            let len = named.values.len();
            (key, Tensor::from_data(TensorData::new(named.values, [len]), device))
        })
        .collect()
}
