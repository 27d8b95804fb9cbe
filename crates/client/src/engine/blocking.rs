//! The engine's two rules for blocking work: SQLite, the keychain and file
//! writes run on tokio's blocking pool, never on the async runtime; std
//! locks guard plain data and are never held across an `.await`.

use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Locks plain data. A panic while it was held leaves no half-done
/// invariant behind in what these locks guard, so a poisoned lock is taken
/// as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("a background task failed: {e}")))?
}
