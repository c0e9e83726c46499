use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use unlearn_shared::api::{Health, PublicLimits};

use crate::app::server::error::ApiError;
use crate::app::server::routes::runs::blocking;
use crate::app::server::{openapi, policy, AppState};

pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Result<Json<Health>, ApiError> {
    let (device, queue_length, subsamples) = blocking(&state, |state| Ok((state.devices()?, state.queue_length()?, state.subsamples().ok()))).await?;
    Ok(Json(Health {
        version: env!("CARGO_PKG_VERSION").into(),
        device,
        queue_length,
        queue_capacity: state.config.queue_capacity,
        public: state.config.public,
        public_limits: state.config.public.then(|| PublicLimits {
            api_requests_per_minute: state.config.rate_limit,
            runs_at_once: policy::ANONYMOUS_LIVE_RUNS,
            subsample: subsamples.map(|s| s.default),
            classifier_subsample: subsamples.map(|s| s.classifier),
        }),
    }))
}

pub(crate) async fn openapi() -> Json<serde_json::Value> {
    Json(openapi::document())
}
