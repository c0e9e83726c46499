//! Every failure a client can cause or meet, as a status code and a JSON `ErrorBody`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use unlearn_shared::api::{ErrorBody, RunId};

use super::{JSON_LIMIT, UPLOAD_LIMIT};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The request is well-formed but asks for something impossible.
    #[error("invalid request")]
    Invalid(String),
    /// The body, path or query could not be read as the endpoint expects.
    #[error("malformed request")]
    Malformed { status: StatusCode, detail: String },
    #[error("unknown model")]
    UnknownModel(String),
    #[error("unknown run")]
    UnknownRun(RunId),
    #[error("method not allowed")]
    MethodNotAllowed(axum::http::Method),
    #[error("not found")]
    NotFound(String),
    #[error("conflict")]
    Conflict(String),
    #[error("authorization required")]
    Unauthorized(&'static str),
    /// The thing existed and was deleted for good (a run's model, by the disk budget).
    #[error("gone")]
    Gone(String),
    #[error("queue full")]
    QueueFull { retry_after: Duration },
    #[error("too many runs from this client")]
    ClientBusy { limit: usize, retry_after: Duration },
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    #[error("starting")]
    Starting,
    #[error("disk full")]
    DiskFull { free: u64, reserve: u64 },
    /// The shared database cannot be reached (a restart, a network fault); the detail goes
    /// to the log only.
    #[error("database unavailable")]
    DatabaseUnavailable(String),
    /// Our fault, not the client's; the detail goes to the log only, as it may name paths
    /// on the server.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    /// A body over the endpoint's limit, declared or read.
    pub(crate) fn body_too_large() -> Self {
        Self::Malformed {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: format!("the body is too large: JSON requests may have {} KiB, model uploads {} MiB", JSON_LIMIT / 1024, UPLOAD_LIMIT >> 20),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Malformed { status, .. } => *status,
            Self::UnknownModel(_) | Self::UnknownRun(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Gone(_) => StatusCode::GONE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::QueueFull { .. } | Self::ClientBusy { .. } | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Starting | Self::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Invalid(detail) | Self::NotFound(detail) | Self::Conflict(detail) | Self::Gone(detail) => detail.clone(),
            // Its detail names files and their paths on the server: for the log only.
            Self::Internal(_) => "the server could not complete the request; its log has the details".into(),
            Self::Malformed { detail, .. } => detail.clone(),
            Self::UnknownModel(id) => format!("there is no model '{id}'; GET /api/models lists them"),
            Self::UnknownRun(id) => format!("there is no run {id}"),
            Self::MethodNotAllowed(method) => format!("{method} is not allowed here; GET /api/openapi.json lists each endpoint's methods"),
            Self::Unauthorized(what) => format!("{what} needs `Authorization: Bearer <token>` on this public server"),
            Self::QueueFull { retry_after } => format!("the job queue is full; try again in {} s", seconds(*retry_after)),
            Self::ClientBusy { limit, retry_after } => format!(
                "this client has {limit} runs queued or running, as many as this public server allows without the token; try again in {} s",
                seconds(*retry_after)
            ),
            Self::RateLimited { retry_after } => format!("too many requests from this client; try again in {} s", seconds(*retry_after)),
            Self::Starting => "the worker is still starting its device; try again shortly".into(),
            Self::DatabaseUnavailable(_) => format!("the run database cannot be reached just now; try again in {} s", seconds(DATABASE_RETRY)),
            Self::DiskFull { free, reserve } => format!(
                "the server's disk has {} MiB free, less than the {} MiB it keeps in reserve; new runs are refused until space is freed",
                free >> 20,
                reserve >> 20
            ),
        }
    }
}

/// When to ask again after the database could not be reached: about a restart's length.
const DATABASE_RETRY: Duration = Duration::from_secs(2);

/// Whole seconds, rounded up: a client that waits this long finds what it waits for.
fn seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            Self::DatabaseUnavailable(detail) => tracing::warn!(%detail, "the database is unavailable"),
            _ => {}
        }
        let body = ErrorBody { error: self.to_string(), detail: self.detail() };
        let mut response = (self.status(), Json(body)).into_response();
        if let Self::QueueFull { retry_after } | Self::ClientBusy { retry_after, .. } | Self::RateLimited { retry_after } = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds(retry_after)));
        }
        if let Self::DatabaseUnavailable(_) = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds(DATABASE_RETRY)));
        }
        if let Self::Unauthorized(_) = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_keep_their_detail_from_the_client() {
        let response = ApiError::internal("/srv/workbench/data/runs/7.safetensors: Permission denied").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "internal error");
        assert!(!body.to_string().contains("/srv") && !body.to_string().contains("Permission"), "{body}");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(seconds(Duration::from_millis(2100)), 3);
        assert_eq!(seconds(Duration::from_secs(2)), 2);
        assert_eq!(seconds(Duration::ZERO), 1);
        let response = ApiError::RateLimited { retry_after: Duration::from_millis(1500) }.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
