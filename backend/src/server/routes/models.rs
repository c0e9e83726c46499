use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use unlearn_shared::api::ModelInfo;

use super::send;
use crate::server::catalog::ImportError;
use crate::server::error::ApiError;
use crate::server::extract::{Body, Path, Query};
use crate::server::guard::Caller;
use crate::server::AppState;

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Vec<ModelInfo>> {
    Json(state.catalog.list())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    name: String,
}

/// The body is the safetensors file itself.
pub async fn import(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<ImportQuery>,
    Body(body): Body,
) -> Result<(StatusCode, Json<ModelInfo>), ApiError> {
    caller.require("importing a model")?;
    let info = tokio::task::spawn_blocking(move || state.catalog.import(&query.name, &body))
        .await
        .map_err(ApiError::internal)?
        .map_err(|error| match error {
            ImportError::Name(_) | ImportError::NotAModel(_) => ApiError::Invalid(error.to_string()),
            ImportError::Exists(_) => ApiError::Conflict(error.to_string()),
            ImportError::Write(_) => ApiError::internal(error),
        })?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn weights(State(state): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let entry = state.catalog.get(&id).ok_or(ApiError::UnknownModel(id))?;
    let download = tokio::task::spawn_blocking(move || entry.browser_weights()).await.map_err(ApiError::internal)?.map_err(ApiError::Internal)?;
    // A model id can be re-imported with other weights, so clients revalidate.
    Ok(send(&download, &headers, "no-cache"))
}
