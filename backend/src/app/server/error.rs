//! Every failure a client can cause or meet, as a status code and a JSON `ErrorBody`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use unlearn_shared::api::{ErrorBody, RunId};

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
    #[error("not found")]
    NotFound(String),
    #[error("conflict")]
    Conflict(String),
    #[error("authorization required")]
    Unauthorized(&'static str),
    #[error("queue full")]
    QueueFull { retry_after: Duration },
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    #[error("starting")]
    Starting,
    /// Our fault, not the client's; the detail goes to the log too.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        Self::Internal(error.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Malformed { status, .. } => *status,
            Self::UnknownModel(_) | Self::UnknownRun(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::QueueFull { .. } | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Starting => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Invalid(detail) | Self::NotFound(detail) | Self::Conflict(detail) | Self::Internal(detail) => detail.clone(),
            Self::Malformed { detail, .. } => detail.clone(),
            Self::UnknownModel(id) => format!("there is no model '{id}'; GET /api/models lists them"),
            Self::UnknownRun(id) => format!("there is no run {id}"),
            Self::Unauthorized(what) => format!("{what} needs `Authorization: Bearer <token>` on this public server"),
            Self::QueueFull { retry_after } => format!("the job queue is full; try again in {} s", retry_after.as_secs()),
            Self::RateLimited { retry_after } => format!("too many requests from this client; try again in {} s", retry_after.as_secs()),
            Self::Starting => "the worker is still starting its device; try again shortly".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = ErrorBody { error: self.to_string(), detail: self.detail() };
        let mut response = (self.status(), Json(body)).into_response();
        if let Self::QueueFull { retry_after } | Self::RateLimited { retry_after } = self {
            let seconds = retry_after.as_secs().max(1);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Self::Unauthorized(_) = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
