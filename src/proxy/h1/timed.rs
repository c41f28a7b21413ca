//! Timeouts that cost nothing when the operation is ready at once.
//!
//! `tokio::time::timeout` reads the clock to set its deadline even when the future it wraps
//! completes on the first poll, which is the common case for socket writes and for reads of
//! data already buffered. Here the future is polled once first; only when it is pending is the
//! deadline set (and the timer registered, on the next poll).

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

/// The operation did not complete in time.
#[derive(Debug, Clone, Copy)]
pub struct Elapsed;

/// `fut`, bounded by `limit` from the moment it first has to wait.
pub async fn timed<F: Future>(limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    match first {
        Some(v) => Ok(v),
        None => tokio::time::timeout(limit, fut).await.map_err(|_| Elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_futures_pass_and_pending_ones_time_out() {
        assert_eq!(timed(Duration::from_secs(1), async { 7 }).await.unwrap(), 7);
        let never = std::future::pending::<()>();
        assert!(timed(Duration::from_secs(1), never).await.is_err());
        let later = tokio::time::sleep(Duration::from_millis(10));
        assert!(timed(Duration::from_secs(1), later).await.is_ok());
    }
}
