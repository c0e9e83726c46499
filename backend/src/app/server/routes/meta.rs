use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use unlearn_shared::api::Health;

use crate::app::server::{openapi, AppState};

pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").into(),
        device: state.jobs.worker().map(|w| w.device.clone()),
        queue_length: state.jobs.waiting(),
        queue_capacity: state.jobs.capacity(),
        public: state.config.public,
    })
}

pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(openapi::document())
}
