use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use unlearn_shared::api::{Health, PublicLimits};

use crate::app::server::{openapi, policy, AppState};

pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").into(),
        device: state.jobs.worker().map(|w| w.device.clone()),
        queue_length: state.jobs.waiting(),
        queue_capacity: state.jobs.capacity(),
        public: state.config.public,
        public_limits: state.config.public.then(|| PublicLimits {
            api_requests_per_minute: state.config.rate_limit,
            runs_at_once: policy::ANONYMOUS_LIVE_RUNS,
            subsample: state.jobs.worker().map(|w| w.default_subsample),
            classifier_subsample: state.jobs.worker().map(|w| w.classifier_subsample),
        }),
    })
}

pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(openapi::document())
}
