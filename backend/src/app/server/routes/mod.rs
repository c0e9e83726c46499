//! The API's routes; handlers stay thin and leave the work to `AppState`.

mod meta;
mod models;
mod runs;
mod samples;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::error::ApiError;
use super::{AppState, UPLOAD_LIMIT};

pub(crate) fn api() -> Router<Arc<AppState>> {
    Router::new()
        .route("/health", get(meta::health))
        .route("/openapi.json", get(meta::openapi))
        .route("/models", get(models::list))
        .route("/models/import", post(models::import).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)))
        .route("/models/{id}/weights", get(models::weights))
        .route("/runs", get(runs::list).post(runs::submit))
        .route("/runs/{id}", get(runs::get).delete(runs::cancel))
        .route("/runs/{id}/events", get(runs::events))
        .route("/runs/{id}/weights", get(runs::weights))
        .route("/samples", get(samples::list))
        .route("/samples/{index}", get(samples::image))
        .fallback(|| async { ApiError::NotFound("no such API endpoint; GET /api/openapi.json lists them".into()) })
        .method_not_allowed_fallback(|method: axum::http::Method| async move { ApiError::MethodNotAllowed(method) })
}

/// Answers with `body`, the version `etag` of a file, or 304 when the client holds it.
fn send(etag: &str, body: axum::body::Body, request_headers: &HeaderMap, cache_control: &'static str) -> Response {
    let etag = HeaderValue::from_str(etag).expect("hex ETag");
    let cached = request_headers.get(header::IF_NONE_MATCH).is_some_and(|given| given == etag);
    let headers = [(header::ETAG, etag), (header::CACHE_CONTROL, HeaderValue::from_static(cache_control))];
    if cached {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let content_type = [(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))];
    (headers, content_type, body).into_response()
}
