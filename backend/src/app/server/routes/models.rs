use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use unlearn_shared::api::ModelInfo;

use super::send;
use crate::app::server::error::ApiError;
use crate::app::server::extract::{Body, Path, Query};
use crate::app::server::guard::{Authorized, ImportModel};
use crate::app::server::AppState;
use crate::storage::model_store::ModelStoreError;

/// Off the runtime's threads: a listing may read models that another process added.
pub(crate) async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Vec<ModelInfo>>, ApiError> {
    Ok(Json(tokio::task::spawn_blocking(move || state.workspace.models.list()).await.map_err(ApiError::internal)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportQuery {
    name: String,
}

/// The body is the safetensors file itself.
pub(crate) async fn import(
    State(state): State<Arc<AppState>>,
    _: Authorized<ImportModel>,
    Query(query): Query<ImportQuery>,
    Body(body): Body,
) -> Result<(StatusCode, Json<ModelInfo>), ApiError> {
    let info =
        tokio::task::spawn_blocking(move || state.workspace.models.import(&query.name, &body)).await.map_err(ApiError::internal)?.map_err(
            |error| match error {
                ModelStoreError::Name(_) | ModelStoreError::NotAModel(..) | ModelStoreError::File(_) => ApiError::Invalid(error.to_string()),
                ModelStoreError::Exists(_) => ApiError::Conflict(error.to_string()),
                ModelStoreError::Unknown(_) | ModelStoreError::Io { .. } => ApiError::internal(error),
            },
        )?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub(crate) async fn weights(State(state): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let download = tokio::task::spawn_blocking(move || match state.workspace.models.get(&id) {
        None => Err(ApiError::UnknownModel(id)),
        Some(_) => state.browser_models.get(&state.workspace.models, &id).map_err(ApiError::internal),
    })
    .await
    .map_err(ApiError::internal)??;
    // A model id can be re-imported with other weights, so clients revalidate.
    // The copy is made once and shared, so slow readers hold no memory of their own.
    Ok(send(&download.etag, download.bytes.clone().into(), &headers, "no-cache"))
}
