//! Axum's extractors with their rejections turned into `ApiError`s, so that a malformed
//! body, path or query gets the same JSON error as everything else.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub(crate) struct Json<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let deadline = request.extensions().get::<BodyDeadline>().map_or(Duration::from_secs(10), |d| d.json);
        let read = tokio::time::timeout(deadline, axum::Json::<T>::from_request(request, state));
        match read.await.map_err(|_| body_timeout(deadline))? {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => {
                Err(body_error(rejection.status()).unwrap_or_else(|| ApiError::Malformed { status: rejection.status(), detail: json_detail(&rejection) }))
            }
        }
    }
}

/// A request body as raw bytes (model uploads).
pub(crate) struct Body(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let read = tokio::time::timeout(UPLOAD_BODY_TIMEOUT, Bytes::from_request(request, state));
        read.await.map_err(|_| body_timeout(UPLOAD_BODY_TIMEOUT))?.map(Self).map_err(|rejection| {
            body_error(rejection.status()).unwrap_or_else(|| ApiError::Malformed { status: rejection.status(), detail: rejection.body_text() })
        })
    }
}

/// axum says only "length limit exceeded"; say what the limits are.
fn body_error(status: StatusCode) -> Option<ApiError> {
    (status == StatusCode::PAYLOAD_TOO_LARGE).then(ApiError::body_too_large)
}

/// How long a body may take to arrive, so that stalled bodies cannot hold connections. The
/// router puts it in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyDeadline {
    /// For JSON bodies (at most 64 KiB).
    pub(crate) json: Duration,
}

/// Model uploads are larger, and need the token.
const UPLOAD_BODY_TIMEOUT: Duration = Duration::from_secs(600);

fn body_timeout(limit: Duration) -> ApiError {
    ApiError::Malformed { status: StatusCode::REQUEST_TIMEOUT, detail: format!("the body did not arrive within {} s", limit.as_secs()) }
}

/// axum's text names the field and what was wrong with it; its preamble adds nothing.
fn json_detail(rejection: &JsonRejection) -> String {
    let text = rejection.body_text();
    match text.split_once(": ") {
        Some((preamble, rest)) if preamble.starts_with("Failed to") => rest.to_owned(),
        _ => text,
    }
}

pub(crate) struct Path<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection: PathRejection| ApiError::Malformed { status: rejection.status(), detail: rejection.body_text() })
    }
}

pub(crate) struct Query<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| ApiError::Malformed { status: rejection.status(), detail: rejection.body_text() })
    }
}
