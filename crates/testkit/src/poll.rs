//! Waiting with a deadline, by polling: for conditions nothing announces
//! (another process's state, a log line, a file). The engine's own status
//! is waited for by watching it instead: [`crate::wait_for`].

use std::future::Future;
use std::time::{Duration, Instant};

/// Waits until `f` returns `Some`, polling every 25 ms, for at most
/// `limit`; returns the value and how long it took.
pub async fn poll_until<T, F, Fut>(limit: Duration, f: F) -> Option<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_every(Duration::from_millis(25), limit, f).await
}

/// [`poll_until`] with its own polling interval.
pub async fn poll_every<T, F, Fut>(
    every: Duration,
    limit: Duration,
    mut f: F,
) -> Option<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some((v, start.elapsed()));
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
