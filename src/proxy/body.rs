//! Reading a request body whole, bounded by `max_body_bytes`.

use bytes::{Bytes, BytesMut};
use pingora::protocols::http::ServerSession;

/// Why a body could not be read.
pub enum BodyReadError {
    /// Over the limit (by Content-Length or by counting).
    TooLarge,
    /// The client went away or sent a broken body.
    Io,
}

/// The declared Content-Length, if any and parseable.
pub fn declared_length(session: &ServerSession) -> Option<usize> {
    let v = session.get_header(http::header::CONTENT_LENGTH)?;
    v.to_str().ok()?.trim().parse().ok()
}

/// Read the body. A body that arrives in one chunk is returned without a copy.
pub async fn read_body(session: &mut ServerSession, max: usize) -> Result<Bytes, BodyReadError> {
    let declared = declared_length(session);
    if declared.is_some_and(|n| n > max) {
        return Err(BodyReadError::TooLarge);
    }
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "reading request body failed");
                return Err(BodyReadError::Io);
            }
        };
        let total = first.as_ref().map_or(0, Bytes::len)
            + buf.as_ref().map_or(0, BytesMut::len)
            + chunk.len();
        if total > max {
            return Err(BodyReadError::TooLarge);
        }
        match (&mut first, &mut buf) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(declared.unwrap_or(total).max(total));
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                first = None;
                buf = Some(b);
            }
            (_, Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, buf) {
        (_, Some(b)) => b.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}
