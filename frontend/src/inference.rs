//! The model in the page: weights from the server, run with Burn's CPU backend compiled to
//! WebAssembly. Images never leave the browser.

use std::collections::HashMap;
use std::rc::Rc;

use burn_flex::Flex;
use leptos::prelude::{LocalStorage, StoredValue, UpdateValue, WithValue};
use unlearn_shared::cifar::{chw_from_rgba, CLASSES};
use unlearn_shared::model::{weights, ResNet};

use crate::api;

pub type Backend = Flex;
pub const BACKEND_NAME: &str = "WebAssembly CPU (Burn Flex, SIMD)";

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
}

/// Models already downloaded and built, by weights URL.
#[derive(Default)]
pub struct Models {
    loaded: HashMap<String, Rc<ResNet<Backend>>>,
}

/// Where the page keeps its models: local to the page's one thread.
pub type ModelCache = StoredValue<Models, LocalStorage>;

impl Models {
    /// The model at `url`, downloaded once.
    pub async fn get(cache: ModelCache, url: &str) -> Result<Rc<ResNet<Backend>>, String> {
        if let Some(model) = cache.with_value(|models| models.loaded.get(url).cloned()) {
            return Ok(model);
        }
        let bytes = api::bytes(url).await?;
        let (tensors, _) = weights::decode(&bytes).map_err(|e| format!("{url}: {e}"))?;
        let model = Rc::new(weights::model_from_state_dict::<Backend>(tensors, &Default::default()).map_err(|e| format!("{url}: {e}"))?);
        cache.update_value(|models| {
            models.loaded.insert(url.to_owned(), model.clone());
        });
        Ok(model)
    }
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.now())
}

/// The three likeliest classes for a 32x32 RGBA image, and the time the model took.
pub fn predict(model: &ResNet<Backend>, rgba: &[u8]) -> Prediction {
    let started = now_ms();
    let probabilities = model.classify(&chw_from_rgba(rgba), &Default::default()).into_data().to_vec::<f32>().expect("f32 probabilities");
    let milliseconds = now_ms() - started;
    Prediction { top: top_k(&probabilities, 3), milliseconds }
}

pub fn top_k(probabilities: &[f32], k: usize) -> Vec<Guess> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    order.into_iter().take(k).map(|i| Guess { class: CLASSES[i], probability: probabilities[i] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    fn top_three_are_the_likeliest_in_order() {
        let probabilities = [0.05, 0.3, 0.0, 0.5, 0.0, 0.1, 0.0, 0.05, 0.0, 0.0];
        let top = top_k(&probabilities, 3);
        assert_eq!(top.iter().map(|g| g.class).collect::<Vec<_>>(), ["cat", "automobile", "dog"]);
    }

    #[wasm_bindgen_test]
    fn a_model_runs_in_the_browser() {
        let model = unlearn_shared::model::ResNetConfig::new().with_width(4).init::<Backend>(&Default::default());
        let prediction = predict(&model, &[128u8; 32 * 32 * 4]);
        assert_eq!(prediction.top.len(), 3);
        let total: f32 = prediction.top.iter().map(|g| g.probability).sum();
        assert!(total > 0.0 && total <= 1.0001, "{total}");
        assert!(prediction.milliseconds >= 0.0);
    }
}
