//! Axum's extractors with their rejections turned into `ApiError`s, so that a malformed
//! body, path or query gets the same JSON error as everything else.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::{JSON_LIMIT, UPLOAD_LIMIT};

pub(crate) struct Json<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
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
        Bytes::from_request(request, state).await.map(Self).map_err(|rejection| {
            body_error(rejection.status()).unwrap_or_else(|| ApiError::Malformed { status: rejection.status(), detail: rejection.body_text() })
        })
    }
}

/// axum says only "length limit exceeded"; say what the limits are.
fn body_error(status: StatusCode) -> Option<ApiError> {
    (status == StatusCode::PAYLOAD_TOO_LARGE).then(|| ApiError::Malformed {
        status,
        detail: format!("the body is too large: JSON requests may have {} KiB, model uploads {} MiB", JSON_LIMIT / 1024, UPLOAD_LIMIT >> 20),
    })
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
