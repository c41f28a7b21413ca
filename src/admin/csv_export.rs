//! A CSV export's response: the records' rows (RFC 4180 quoting, CRLF) streamed in chunks of
//! 1,000, the first after the header row, as an attachment.

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Rows per chunk of the body.
const CHUNK: usize = 1_000;

/// A record as a CSV row.
pub trait CsvRow {
    const HEADER: &'static [&'static str];
    fn row(&self) -> Vec<String>;
}

/// Rows of CSV, optionally after the header row.
pub fn chunk<T: CsvRow>(records: &[T], header: bool) -> bytes::Bytes {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(160 * (records.len() + 1)));
    if header {
        let _ = w.write_record(T::HEADER);
    }
    for r in records {
        let _ = w.write_record(r.row());
    }
    bytes::Bytes::from(w.into_inner().unwrap_or_default())
}

/// A text field a spreadsheet will not run as a formula: a leading `=`, `+`, `-`, `@`, tab or
/// carriage return gets a `'` in front (OWASP's advice for CSV injection).
pub fn inert(s: &str) -> String {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{s}"),
        _ => s.to_string(),
    }
}

/// `records` as `filename`.
pub fn attachment<T: CsvRow + Send + Sync + 'static>(
    records: Vec<T>,
    filename: &'static str,
) -> Response {
    let mut start = 0usize;
    let mut first = true;
    let chunks = std::iter::from_fn(move || {
        if !first && start >= records.len() {
            return None;
        }
        let end = (start + CHUNK).min(records.len());
        let chunk = chunk(&records[start..end], first);
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
