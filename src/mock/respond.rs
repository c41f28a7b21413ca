//! The pieces of an answer that the plain mock's handlers and the simulator's share: the
//! server's name header, vLLM's error shape, the tokens a request wants, and streamed bodies.

use super::MockState;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub(in crate::mock) fn named(st: &MockState, mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&st.config.name) {
        resp.headers_mut().insert("x-mock-server", v);
    }
    resp
}

pub(in crate::mock) fn error(st: &MockState, status: StatusCode, message: &str) -> Response {
    let body = json!({"object": "error", "message": message, "type": "BadRequestError", "code": status.as_u16()});
    named(st, (status, axum::Json(body)).into_response())
}

pub(in crate::mock) fn tokens_wanted(st: &MockState, v: &Value) -> usize {
    v.get("max_tokens")
        .or_else(|| v.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .map_or(st.config.default_tokens, |n| n as usize)
        .min(100_000)
}

/// Counts a stream as aborted when it is dropped before its last event.
pub(in crate::mock) struct StreamGuard {
    st: Arc<MockState>,
    pub(in crate::mock) done: bool,
}

impl StreamGuard {
    /// A stream starts (it is in flight until the guard is dropped).
    pub(in crate::mock) fn start(st: Arc<MockState>) -> Self {
        st.in_flight.fetch_add(1, Relaxed);
        Self { st, done: false }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.st.in_flight.fetch_sub(1, Relaxed);
        if self.done {
            self.st.completed_streams.fetch_add(1, Relaxed);
        } else {
            self.st.aborted_streams.fetch_add(1, Relaxed);
        }
    }
}

/// A body stream fed by a task through a channel of capacity 1; the task stops when the client
/// goes away (the receiver is dropped).
pub(in crate::mock) fn async_stream<F, Fut>(
    f: F,
) -> impl futures_core::Stream<Item = Result<Bytes, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}
