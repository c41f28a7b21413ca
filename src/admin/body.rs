//! Request bodies of the admin API: bounded, JSON, with precise 400s.

use super::error::ApiError;
use axum::body::Body;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Largest admin request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Read the whole body (at most 64 KiB: a 413 above).
pub async fn bytes(body: Body) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                .detail(format!("at most {MAX_BODY_BYTES} bytes"))
        })
}

/// Read a JSON body into `T` (unknown fields are refused when `T` says so).
pub async fn json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let b = bytes(body).await?;
    serde_json::from_slice(&b)
        .map_err(|e| ApiError::bad_request("invalid request body", e.to_string()))
}

/// `Some(Some(v))` for a value, `Some(None)` for an explicit null, `None` when absent.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Ok(Some(Option::deserialize(d)?))
}
