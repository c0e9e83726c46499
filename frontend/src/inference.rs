//! The model in the page: weights from the server, run with Burn compiled to WebAssembly, on
//! the GPU through WebGPU where the browser offers it, else on the CPU. Images never leave
//! the browser.

use std::collections::HashMap;
use std::rc::Rc;

use burn::prelude::Backend;
use burn_flex::Flex;
use burn_wgpu::{graphics, Wgpu, WgpuDevice};
use futures_util::future::{FutureExt, LocalBoxFuture, Shared};
use leptos::prelude::{LocalStorage, StoredValue, UpdateValue, WithValue};
use unlearn_shared::cifar::{chw_from_rgba, CLASSES, IMAGE_SIDE};
use unlearn_shared::model::{weights, ResNet};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::api;

/// Where the page runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    WebGpu,
    Cpu,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::WebGpu => "WebGPU (Burn wgpu)",
            Engine::Cpu => "WebAssembly CPU (Burn Flex, SIMD)",
        }
    }

    /// The engines this browser can run, best first: WebGPU on a real GPU, then the CPU, then
    /// WebGPU in software (SwiftShader runs ResNet18 some twenty times slower than the CPU).
    pub async fn available() -> Vec<Engine> {
        match WEBGPU.with(Clone::clone).await {
            Some(Adapter::Hardware) => vec![Engine::WebGpu, Engine::Cpu],
            Some(Adapter::Software) => vec![Engine::Cpu, Engine::WebGpu],
            None => vec![Engine::Cpu],
        }
    }
}

/// The GPU the browser's WebGPU offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    Hardware,
    /// A fallback adapter: the GPU emulated on the CPU.
    Software,
}

thread_local! {
    /// The page's WebGPU adapter, set up for Burn once, on first asking.
    static WEBGPU: Shared<LocalBoxFuture<'static, Option<Adapter>>> = start_webgpu().boxed_local().shared();
}

async fn start_webgpu() -> Option<Adapter> {
    let adapter = offered_adapter().await?;
    burn_wgpu::init_setup_async::<graphics::WebGpu>(&WgpuDevice::default(), Default::default()).await;
    Some(adapter)
}

/// What `navigator.gpu.requestAdapter()` gives. Asked before Burn's set-up, which panics
/// without an adapter, and a panic ends the page's WebAssembly.
async fn offered_adapter() -> Option<Adapter> {
    let field = |object: &JsValue, name: &str| js_sys::Reflect::get(object, &name.into()).ok().filter(|v| !v.is_undefined() && !v.is_null());
    let gpu = field(&web_sys::window()?.navigator(), "gpu")?;
    let request = field(&gpu, "requestAdapter")?.dyn_into::<js_sys::Function>().ok()?;
    let promise = request.call0(&gpu).ok()?.dyn_into::<js_sys::Promise>().ok()?;
    let adapter = JsFuture::from(promise).await.ok().filter(|a| !a.is_undefined() && !a.is_null())?;
    let software = field(&adapter, "info").and_then(|info| field(&info, "isFallbackAdapter")).is_some_and(|f| f.is_truthy());
    Some(if software { Adapter::Software } else { Adapter::Hardware })
}

/// A model ready to run on one engine.
pub enum Model {
    WebGpu(Box<ResNet<Wgpu>>),
    Cpu(Box<ResNet<Flex>>),
}

impl Model {
    async fn load(engine: Engine, bytes: &[u8]) -> Result<Model, String> {
        let (tensors, _) = weights::decode(bytes).map_err(|e| e.to_string())?;
        let model = match engine {
            Engine::WebGpu => Model::WebGpu(Box::new(weights::model_from_state_dict(tensors, &WgpuDevice::default()).map_err(|e| e.to_string())?)),
            Engine::Cpu => Model::Cpu(Box::new(weights::model_from_state_dict(tensors, &Default::default()).map_err(|e| e.to_string())?)),
        };
        // The GPU compiles its shaders on the first run: do it now, so the times shown are the model's.
        model.probabilities(&[0; IMAGE_SIDE * IMAGE_SIDE * 4]).await?;
        Ok(model)
    }

    pub fn engine(&self) -> Engine {
        match self {
            Model::WebGpu(_) => Engine::WebGpu,
            Model::Cpu(_) => Engine::Cpu,
        }
    }

    async fn probabilities(&self, rgba: &[u8]) -> Result<Vec<f32>, String> {
        match self {
            Model::WebGpu(model) => probabilities(model, rgba).await,
            Model::Cpu(model) => probabilities(model, rgba).await,
        }
    }
}

async fn probabilities<B: Backend>(model: &ResNet<B>, rgba: &[u8]) -> Result<Vec<f32>, String> {
    let output = model.classify(&chw_from_rgba(rgba), &Default::default());
    let data = output.into_data_async().await.map_err(|e| format!("the model did not run: {e:?}"))?;
    data.to_vec::<f32>().map_err(|e| format!("{e:?}"))
}

/// One class's probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Guess {
    pub class: &'static str,
    pub probability: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub top: Vec<Guess>,
    pub milliseconds: f64,
    pub engine: Engine,
}

/// Models already downloaded and built, by engine and weights URL.
#[derive(Default)]
pub struct Models {
    loaded: HashMap<(Engine, String), Rc<Model>>,
}

/// Where the page keeps its models: local to the page's one thread.
pub type ModelCache = StoredValue<Models, LocalStorage>;

impl Models {
    /// The model at `url` on `engine`, downloaded once; `on_progress` hears how the download
    /// goes.
    pub async fn get(cache: ModelCache, engine: Engine, url: &str, on_progress: impl Fn(u64, Option<u64>)) -> Result<Rc<Model>, String> {
        let key = (engine, url.to_owned());
        if let Some(model) = cache.with_value(|models| models.loaded.get(&key).cloned()) {
            return Ok(model);
        }
        let bytes = api::bytes(url, on_progress).await?;
        let model = Rc::new(Model::load(engine, &bytes).await.map_err(|e| format!("{url}: {e}"))?);
        cache.update_value(|models| {
            models.loaded.insert(key, model.clone());
        });
        Ok(model)
    }
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.now())
}

/// The three likeliest classes for a 32x32 RGBA image, and the time the model took.
pub async fn predict(model: &Model, rgba: &[u8]) -> Result<Prediction, String> {
    let started = now_ms();
    let probabilities = model.probabilities(rgba).await?;
    let milliseconds = now_ms() - started;
    Ok(Prediction { top: top_k(&probabilities, 3), milliseconds, engine: model.engine() })
}

pub fn top_k(probabilities: &[f32], k: usize) -> Vec<Guess> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    order.into_iter().take(k).map(|i| Guess { class: CLASSES[i], probability: probabilities[i] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use unlearn_shared::model::ResNetConfig;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    fn top_three_are_the_likeliest_in_order() {
        let probabilities = [0.05, 0.3, 0.0, 0.5, 0.0, 0.1, 0.0, 0.05, 0.0, 0.0];
        let top = top_k(&probabilities, 3);
        assert_eq!(top.iter().map(|g| g.class).collect::<Vec<_>>(), ["cat", "automobile", "dog"]);
    }

    /// A tiny random model, as the server would send it.
    fn weights_file() -> Vec<u8> {
        let model = ResNetConfig::new().with_width(4).init::<Flex>(&Default::default());
        weights::encode(&weights::export(&model), Default::default(), weights::Precision::Half)
    }

    fn image() -> Vec<u8> {
        (0..32 * 32 * 4).map(|i| (i * 37 % 251) as u8).collect()
    }

    #[wasm_bindgen_test]
    async fn a_model_runs_on_the_cpu() {
        let model = Model::load(Engine::Cpu, &weights_file()).await.expect("loaded");
        let prediction = predict(&model, &image()).await.expect("ran");
        assert_eq!(prediction.top.len(), 3);
        let total: f32 = prediction.top.iter().map(|g| g.probability).sum();
        assert!(total > 0.0 && total <= 1.0001, "{total}");
        assert!(prediction.milliseconds >= 0.0);
        assert_eq!(prediction.engine, Engine::Cpu);
    }

    /// A benchmark, not a check: the reference-sized ResNet18's time per image on the CPU
    /// engine, the figure the page shows (docs/performance.md).
    #[wasm_bindgen_test]
    #[ignore]
    async fn full_size_model_per_image_on_the_cpu() {
        let model = ResNetConfig::new().init::<Flex>(&Default::default());
        let file = weights::encode(&weights::export(&model), Default::default(), weights::Precision::Half);
        let model = Model::load(Engine::Cpu, &file).await.expect("loaded");
        let mut times = Vec::new();
        for _ in 0..32 {
            times.push(predict(&model, &image()).await.expect("ran").milliseconds);
        }
        times.sort_by(f64::total_cmp);
        wasm_bindgen_test::console_log!(
            "ResNet18 on the CPU engine, ms per image: median {:.1}, fastest {:.1}, slowest {:.1}",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }

    /// A benchmark, not a check: where the reference-sized ResNet18's time per image goes on
    /// the CPU engine, block by block, medians over 16 images (docs/performance.md).
    #[wasm_bindgen_test]
    #[ignore]
    async fn full_size_model_per_block_on_the_cpu() {
        use burn::tensor::{Distribution, Tensor};
        use unlearn_shared::model::NormStats;

        let model = ResNetConfig::new().init::<Flex>(&Default::default());
        let file = weights::encode(&weights::export(&model), Default::default(), weights::Precision::Half);
        let Model::Cpu(model) = Model::load(Engine::Cpu, &file).await.expect("loaded") else { unreachable!("a CPU model") };
        let stats = NormStats::Running;
        let blocks: Vec<_> = [&model.layer1, &model.layer2, &model.layer3, &model.layer4]
            .into_iter()
            .enumerate()
            .flat_map(|(stage, blocks)| blocks.iter().enumerate().map(move |(index, block)| (format!("layer{}.{index}", stage + 1), block)))
            .collect();
        // Each part's time, read back as the page reads its result, so that no work is left pending.
        let timed = |times: &mut Vec<f64>, part: &mut dyn FnMut() -> Tensor<Flex, 4>| {
            let started = now_ms();
            let output = part();
            output.to_data();
            times.push(now_ms() - started);
            output
        };
        let random = |shape: [usize; 4]| Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default());
        // What the stem gives `layer1`, in shape.
        let [width, ..] = model.conv1.weight.dims();
        let mut times = vec![Vec::new(); blocks.len() + 1];
        for _ in 0..16 {
            let images = random([1, 3, IMAGE_SIDE, IMAGE_SIDE]);
            timed(&mut times[0], &mut || model.forward(images.clone(), stats).unsqueeze());
            let mut x = random([1, width, IMAGE_SIDE, IMAGE_SIDE]);
            for ((_, block), times) in blocks.iter().zip(&mut times[1..]) {
                x = timed(times, &mut || block.forward(x.clone(), stats));
            }
        }
        let median = |times: &mut Vec<f64>| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        };
        wasm_bindgen_test::console_log!("the whole model: median {:.2} ms, fastest {:.2}", median(&mut times[0]), times[0][0]);
        let mut blocks_total = 0.0;
        for ((name, _), times) in blocks.iter().zip(&mut times[1..]) {
            let block = median(times);
            blocks_total += block;
            wasm_bindgen_test::console_log!("{name}: median {block:.2} ms, fastest {:.2}", times[0]);
        }
        wasm_bindgen_test::console_log!("the eight blocks: {blocks_total:.1} ms by the medians");
    }

    /// The browser tests run Chromium with WebGPU on (`webdriver.json`), in software
    /// (SwiftShader), so it must be found and ranked after the CPU, and the GPU must compute
    /// what the CPU computes.
    #[wasm_bindgen_test]
    async fn webgpu_is_found_and_agrees_with_the_cpu() {
        assert_eq!(Engine::available().await, [Engine::Cpu, Engine::WebGpu]);
        let file = weights_file();
        let cpu = Model::load(Engine::Cpu, &file).await.expect("CPU model").probabilities(&image()).await.expect("CPU run");
        let gpu = Model::load(Engine::WebGpu, &file).await.expect("WebGPU model").probabilities(&image()).await.expect("WebGPU run");
        let largest = cpu.iter().zip(&gpu).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(largest < 1e-4, "CPU {cpu:?} vs WebGPU {gpu:?}");
    }
}
