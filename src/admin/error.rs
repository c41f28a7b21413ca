//! The admin API's error responses: a JSON body `{"error", "detail"?}` (or, for a failed pod
//! restart, the spec's `{"status": "failed", ...}` body) with the headers `x-error` (the
//! message) and `x-error-id` (unique per error, written to the log with it).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The error body of every admin endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Human-readable error message (also in the `x-error` header).
    pub error: String,
    /// Additional context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An error answer of the admin API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    detail: Option<String>,
    /// A body other than `{"error", "detail"}`, serialized.
    body: Option<Vec<u8>>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            detail: None,
            body: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// An error whose body is `body` (the headers still carry `message`).
    pub fn with_body(
        status: StatusCode,
        message: impl Into<String>,
        body: &impl Serialize,
    ) -> Self {
        Self {
            body: serde_json::to_vec(body).ok(),
            ..Self::new(status, message)
        }
    }

    pub fn bad_request(message: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).detail(detail)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").detail(detail)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError::*;
        match e {
            Unavailable => Self::new(StatusCode::SERVICE_UNAVAILABLE, "valkey unavailable"),
            // The spec names Valkey failures "valkey unavailable"; the cause is the detail.
            Valkey(detail) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "valkey unavailable").detail(detail)
            }
            Invalid(detail) => Self::bad_request("invalid request", detail),
            e @ (TooMany(_) | TooManyAudit(_)) => {
                Self::bad_request("range too large", e.to_string())
            }
        }
    }
}

/// A fresh error id: 16 random bytes, hex.
fn error_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A header value from free text: non-printable and non-ASCII bytes become '?'.
fn header_text(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .take(512)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let id = error_id();
        let detail = self.detail.as_deref().unwrap_or("");
        if self.status.is_server_error() {
            tracing::error!(error_id = %id, status = self.status.as_u16(), error = %self.message, detail, "admin API error");
        } else {
            tracing::info!(error_id = %id, status = self.status.as_u16(), error = %self.message, detail, "admin API error");
        }
        let mut resp = match self.body {
            Some(body) => (
                self.status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            None => (
                self.status,
                axum::Json(ErrorBody {
                    error: self.message.clone(),
                    detail: self.detail,
                }),
            )
                .into_response(),
        };
        let headers = resp.headers_mut();
        headers.insert("x-error", header_text(&self.message));
        headers.insert(
            "x-error-id",
            HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0")),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_the_headers_and_a_unique_id() {
        let a = ApiError::not_found("pod not found").into_response();
        let b = ApiError::not_found("pod not found").into_response();
        assert_eq!(a.status(), StatusCode::NOT_FOUND);
        assert_eq!(a.headers()["x-error"], "pod not found");
        assert_ne!(a.headers()["x-error-id"], b.headers()["x-error-id"]);
        assert_eq!(a.headers()["x-error-id"].len(), 32);
    }

    #[test]
    fn the_error_id_is_written_to_the_log() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let resp = tracing::subscriber::with_default(subscriber, || {
            ApiError::new(StatusCode::BAD_GATEWAY, "runpod API error")
                .detail("GET /pods: timed out")
                .into_response()
        });
        let id = resp.headers()["x-error-id"].to_str().unwrap().to_string();
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains(&id), "{log}");
        assert!(
            log.contains("runpod API error") && log.contains("timed out"),
            "{log}"
        );
    }

    #[test]
    fn header_text_is_sanitised() {
        assert_eq!(header_text("bad\r\nthing é"), "bad??thing ?");
    }
}
