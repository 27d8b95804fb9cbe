//! Engines for tests: fast timings ([`test_config`]), builders over a
//! [`MemoryVault`] and a [`TestHttp`], and waiting on the engine's status
//! ([`wait_for`]) by watching it, not by sleeping.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_client::{Clock, Config, Engine, SessionState, Status, SystemClock, Vault};

use crate::{MemoryVault, TestHttp, TestServer};

/// The password of the tests' users.
pub const PW: &str = "correct horse battery staple";

/// Fast timings for tests.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.heartbeat = Duration::from_millis(200);
    c.sync_interval = Duration::from_secs(2);
    c.edit_debounce = Duration::from_millis(100);
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(500);
    c.timeouts.probe = Duration::from_secs(1);
    c.timeouts.request = Duration::from_secs(5);
    c
}

/// An engine on `dir` with [`test_config`], `vault`, `http` and `clock`.
pub async fn engine_with(
    dir: &Path,
    vault: &MemoryVault,
    http: &TestHttp,
    clock: Arc<dyn Clock>,
) -> Engine {
    Engine::start(
        test_config(dir),
        Arc::new(vault.clone()) as Arc<dyn Vault>,
        Arc::new(http.clone()),
        clock,
    )
    .await
    .expect("the engine starts")
}

/// [`engine_with`] the system clock.
pub async fn engine(dir: &Path, vault: &MemoryVault, http: &TestHttp) -> Engine {
    engine_with(dir, vault, http, Arc::new(SystemClock)).await
}

/// A new engine on `dir`, signed in as `user` (password [`PW`]).
pub async fn signed_in(
    server: &TestServer,
    dir: &Path,
    vault: &MemoryVault,
    http: &TestHttp,
    user: &str,
) -> Engine {
    let e = engine(dir, vault, http).await;
    e.sign_in(&server.url(), user, PW).await.expect("sign in");
    e
}

/// Saves `n` new notes (`note {i}`, `written offline {i}`), as a person
/// working offline would.
pub async fn save_notes(engine: &Engine, n: usize) {
    for i in 0..n {
        engine
            .save_note(
                None,
                None,
                format!("note {i}"),
                format!("written offline {i}"),
            )
            .await
            .expect("a local save never needs the server");
    }
}

/// Waits (up to `secs`) until the status satisfies `pred`; returns it.
///
/// # Panics
/// When time runs out, with `what` and the last status.
pub async fn wait_for(
    engine: &Engine,
    secs: u64,
    what: &str,
    pred: impl Fn(&Status) -> bool,
) -> Status {
    let mut rx = engine.subscribe();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = rx.borrow_and_update().clone();
        if pred(&st) {
            return st;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            panic!("timed out waiting for {what}; last status: {st:?}");
        }
    }
}

/// Waits (up to `secs`) until the session is in `state`.
pub async fn wait_state(engine: &Engine, state: SessionState, secs: u64) -> Status {
    wait_for(engine, secs, &format!("{state:?}"), |s| s.state == state).await
}
