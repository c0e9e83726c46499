//! The model's weights by torchvision state-dict key, and their safetensors encoding.
//!
//! One format serves every purpose: imported PyTorch checkpoints, the workbench's own saved
//! models (f32, with metadata), and the compact f16 copy the browser downloads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use super::resnet::{ResNet, ResNetConfig};

/// A tensor in torchvision's layout, under its state-dict key.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Tensors by key, sorted so that encodings are byte-for-byte reproducible.
pub type StateDict = BTreeMap<String, NamedTensor>;

/// Free-form string metadata stored in the safetensors header.
pub type Metadata = HashMap<String, String>;

/// How floats are stored in an encoded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// Parameters in f16, half the size: the browser's copy and the shipped model.
    /// BatchNorm's running statistics stay f32: small running variances underflow in f16.
    Half,
}

impl Precision {
    fn dtype(self, key: &str) -> Dtype {
        match self {
            Self::Half if !is_statistic(key) => Dtype::F16,
            _ => Dtype::F32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("not a safetensors file: {0}")]
    Format(String),
    #[error("tensor '{key}' has dtype {dtype}; only F32, F16 and BF16 weights can be loaded")]
    Dtype { key: String, dtype: String },
    #[error("not a ResNet18 checkpoint: {0}")]
    Architecture(String),
    #[error("checkpoint does not match the model:\n{}", .0.join("\n"))]
    Mismatch(Vec<String>),
}

/// Keys PyTorch stores that carry no weight the model uses.
const IGNORED_SUFFIXES: [&str; 1] = [".num_batches_tracked"];

/// The torchvision key of a module path: our `downsample.{conv,bn}` is torchvision's
/// `downsample.{0,1}` (an `nn.Sequential`).
fn torch_key(path: &[String]) -> String {
    path.join(".").replace(".downsample.conv.", ".downsample.0.").replace(".downsample.bn.", ".downsample.1.")
}

/// Burn's `Linear` stores `[in, out]`; torchvision stores `[out, in]`.
fn is_transposed(key: &str) -> bool {
    key == "fc.weight"
}

fn transpose(shape: &[usize], values: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (rows, cols) = (shape[0], shape[1]);
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    (vec![cols, rows], out)
}

/// Sees every float tensor of a model (parameters and running statistics) with its key.
pub trait KeyedVisitor<B: Backend> {
    fn visit<const D: usize>(&mut self, key: &str, param: &Param<Tensor<B, D>>);
}

/// Rewrites every float tensor of a model, knowing its key.
pub trait KeyedMapper<B: Backend> {
    fn map<const D: usize>(&mut self, key: &str, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>>;
}

/// Adapts the keyed traits to Burn's visitor and mapper by tracking the module path.
struct Keyed<'a, T> {
    path: Vec<String>,
    inner: &'a mut T,
}

impl<T> Keyed<'_, T> {
    fn key(&self) -> String {
        torch_key(&self.path)
    }
}

impl<B: Backend, V: KeyedVisitor<B>> ModuleVisitor<B> for Keyed<'_, V> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = self.key();
        self.inner.visit(&key, param);
    }
}

impl<B: Backend, M: KeyedMapper<B>> ModuleMapper<B> for Keyed<'_, M> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = self.key();
        self.inner.map(&key, param)
    }
}

pub fn visit_keyed<B: Backend>(model: &ResNet<B>, visitor: &mut impl KeyedVisitor<B>) {
    model.visit(&mut Keyed { path: Vec::new(), inner: visitor });
}

pub fn map_keyed<B: Backend>(model: ResNet<B>, mapper: &mut impl KeyedMapper<B>) -> ResNet<B> {
    model.map(&mut Keyed { path: Vec::new(), inner: mapper })
}

struct Exporter(StateDict);

impl<B: Backend> KeyedVisitor<B> for Exporter {
    fn visit<const D: usize>(&mut self, key: &str, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let values = tensor.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data");
        let (shape, values) = if is_transposed(key) { transpose(&shape, &values) } else { (shape, values) };
        self.0.insert(key.to_owned(), NamedTensor { shape, values });
    }
}

struct Importer {
    tensors: StateDict,
    problems: Vec<String>,
}

impl<B: Backend> KeyedMapper<B> for Importer {
    fn map<const D: usize>(&mut self, key: &str, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let expected = tensor.dims().to_vec();
        let Some(named) = self.tensors.remove(key) else {
            self.problems.push(format!("  missing   {key} (expected shape {expected:?})"));
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let (shape, values) = if is_transposed(key) && named.shape.len() == 2 { transpose(&named.shape, &named.values) } else { (named.shape, named.values) };
        if shape != expected {
            self.problems.push(format!("  shape     {key}: checkpoint {:?}, model {expected:?}", named_shape(key, &shape)));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let loaded = Tensor::from_data(TensorData::new(values, shape), &tensor.device());
        // A fresh tensor tracks no gradients; keep the parameter trainable if it was.
        let loaded = if tensor.is_require_grad() { loaded.require_grad() } else { loaded };
        Param::from_mapped_value(id, loaded, mapper)
    }
}

/// Shapes in error messages are given as the checkpoint stores them.
fn named_shape(key: &str, shape: &[usize]) -> Vec<usize> {
    if is_transposed(key) {
        shape.iter().rev().copied().collect()
    } else {
        shape.to_vec()
    }
}

/// Every weight and BatchNorm statistic of the model, by torchvision key.
///
/// Running statistics are read as stored: export an autodiff model through `valid()`,
/// which folds in the last training step's update.
pub fn export<B: Backend>(model: &ResNet<B>) -> StateDict {
    let mut exporter = Exporter(StateDict::new());
    visit_keyed(model, &mut exporter);
    exporter.0
}

/// Loads a state dict into `model`. Fails, listing every missing, unexpected and
/// wrongly-shaped key, unless the two match exactly.
pub fn import<B: Backend>(model: ResNet<B>, mut tensors: StateDict) -> Result<ResNet<B>, WeightsError> {
    tensors.retain(|key, _| !IGNORED_SUFFIXES.iter().any(|suffix| key.ends_with(suffix)));
    let mut importer = Importer { tensors, problems: Vec::new() };
    let model = map_keyed(model, &mut importer);
    let mut problems = importer.problems;
    problems.extend(importer.tensors.keys().map(|key| format!("  unexpected {key}")));
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(WeightsError::Mismatch(problems))
    }
}

/// Reads the architecture from the stem and the classifier, so that any width loads.
pub fn infer_config(tensors: &StateDict) -> Result<ResNetConfig, WeightsError> {
    let shape = |key: &str| tensors.get(key).map(|t| t.shape.clone()).ok_or_else(|| WeightsError::Architecture(format!("no '{key}' tensor")));
    let stem = shape("conv1.weight")?;
    let fc = shape("fc.weight")?;
    match (stem.as_slice(), fc.as_slice()) {
        ([width, 3, 3, 3], [classes, features]) if *features == 8 * width && *classes > 0 => Ok(ResNetConfig { width: *width, num_classes: *classes }),
        _ => Err(WeightsError::Architecture(format!(
            "conv1.weight has shape {stem:?} and fc.weight {fc:?}; expected [w, 3, 3, 3] (the CIFAR stem) and [classes, 8w]"
        ))),
    }
}

/// Builds the model a state dict describes.
pub fn model_from_state_dict<B: Backend>(tensors: StateDict, device: &B::Device) -> Result<ResNet<B>, WeightsError> {
    let config = infer_config(&tensors)?;
    import(config.init(device), tensors)
}

/// Encodes a state dict as safetensors.
pub fn encode(tensors: &StateDict, metadata: Metadata, precision: Precision) -> Vec<u8> {
    let stored = stored_bytes(tensors, precision);
    safetensors::serialize(tensor_views(tensors, &stored), (!metadata.is_empty()).then_some(metadata)).expect("valid tensors serialise")
}

/// Writes a state dict to `path` as [`encode`] would encode it, without holding the file in
/// memory: cache entries run to hundreds of megabytes.
pub fn write(tensors: &StateDict, metadata: Metadata, precision: Precision, path: &std::path::Path) -> std::io::Result<()> {
    let stored = stored_bytes(tensors, precision);
    safetensors::serialize_to_file(tensor_views(tensors, &stored), (!metadata.is_empty()).then_some(metadata), path).map_err(|error| match error {
        safetensors::SafeTensorError::IoError(error) => error,
        other => std::io::Error::other(other),
    })
}

/// Each tensor's bytes as the file stores them: f32 values borrowed where the machine's order
/// is the file's (little-endian), others converted.
fn stored_bytes(tensors: &StateDict, precision: Precision) -> Vec<(Dtype, Cow<'_, [u8]>)> {
    tensors
        .iter()
        .map(|(key, tensor)| {
            let dtype = precision.dtype(key);
            let bytes = match dtype {
                Dtype::F16 => Cow::Owned(tensor.values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()),
                _ if cfg!(target_endian = "little") => Cow::Borrowed(bytemuck::cast_slice(&tensor.values)),
                _ => Cow::Owned(tensor.values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            };
            (dtype, bytes)
        })
        .collect()
}

fn tensor_views<'a>(tensors: &'a StateDict, stored: &'a [(Dtype, Cow<'_, [u8]>)]) -> impl Iterator<Item = (String, safetensors::tensor::TensorView<'a>)> {
    tensors.iter().zip(stored).map(|((key, tensor), (dtype, data))| {
        let view = safetensors::tensor::TensorView::new(*dtype, tensor.shape.clone(), data).expect("sizes agree by construction");
        (key.clone(), view)
    })
}

/// Decodes safetensors bytes into float tensors and the header's metadata.
/// Integer tensors PyTorch keeps as bookkeeping (`num_batches_tracked`) are skipped.
pub fn decode(bytes: &[u8]) -> Result<(StateDict, Metadata), WeightsError> {
    let format = |e: safetensors::SafeTensorError| WeightsError::Format(e.to_string());
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(format)?;
    let file = SafeTensors::deserialize(bytes).map_err(format)?;
    let mut tensors = StateDict::new();
    for (key, view) in file.iter() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            _ if IGNORED_SUFFIXES.iter().any(|suffix| key.ends_with(suffix)) => continue,
            other => return Err(WeightsError::Dtype { key: key.to_owned(), dtype: format!("{other:?}") }),
        };
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            return Err(WeightsError::Format(format!("tensor '{key}' holds a non-finite value at index {bad}")));
        }
        tensors.insert(key.to_owned(), NamedTensor { shape: view.shape().to_vec(), values });
    }
    Ok((tensors, header.metadata().clone().unwrap_or_default()))
}

/// Whether a key names a BatchNorm running statistic rather than a trainable parameter.
pub fn is_statistic(key: &str) -> bool {
    key.ends_with(".running_mean") || key.ends_with(".running_var")
}

struct ParameterSizes(BTreeMap<String, usize>);

impl<B: Backend> KeyedVisitor<B> for ParameterSizes {
    fn visit<const D: usize>(&mut self, key: &str, param: &Param<Tensor<B, D>>) {
        if !is_statistic(key) {
            self.0.insert(key.to_owned(), param.shape().num_elements());
        }
    }
}

/// Element count of every trainable parameter (running statistics excluded), by key.
pub fn parameter_sizes<B: Backend>(model: &ResNet<B>) -> BTreeMap<String, usize> {
    let mut sizes = ParameterSizes(BTreeMap::new());
    visit_keyed(model, &mut sizes);
    sizes.0
}

/// Trainable parameters, counted as torchvision does.
pub fn parameter_count<B: Backend>(model: &ResNet<B>) -> usize {
    parameter_sizes(model).values().sum()
}
