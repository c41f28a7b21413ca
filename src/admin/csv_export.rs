//! A CSV export's response: the records' rows streamed in chunks of 1,000 (the first with the
//! header row), as an attachment.

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Rows per chunk of the body.
const CHUNK: usize = 1_000;

/// `records` as `filename`, each chunk of rows written by `rows(records, with_header)`.
pub fn attachment<T: Send + Sync + 'static>(
    records: Vec<T>,
    filename: &'static str,
    rows: fn(&[T], bool) -> bytes::Bytes,
) -> Response {
    let mut start = 0usize;
    let mut first = true;
    let chunks = std::iter::from_fn(move || {
        if !first && start >= records.len() {
            return None;
        }
        let end = (start + CHUNK).min(records.len());
        let chunk = rows(&records[start..end], first);
        first = false;
        start = end;
        Some(Ok::<_, std::convert::Infallible>(chunk))
    });
    let disposition = format!("attachment; filename=\"{filename}\"");
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(tokio_stream::iter(chunks)),
    )
        .into_response()
}
