//! News of what other instances commit, by `LISTEN`/`NOTIFY`: triggers
//! (migration 3) notify `latchkey_changes` when a transaction revokes a session,
//! moves a user's rev or changes the signing keys, and one connection of
//! each instance, outside the pool, listens. A notification carries no
//! data: it says "poll now", and the poll reads what changed as it always
//! has, so nothing depends on a notification arriving. While the listener
//! is not connected (the database restarting, the network cut) the
//! instance polls often, as without it, and every reconnect counts as news,
//! which makes the poll that catches up on what was missed meanwhile.
//!
//! A connection whose peer vanished without a word (a cut network) is
//! found by a heartbeat query, not left to the kernel's TCP timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::connect::Target;
use crate::store::{Changes, StoreError};

/// Listens on the channel the triggers of migration 3 notify.
const LISTEN: &str = "LISTEN latchkey_changes";

/// How often the listening connection is checked.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the check may take before the connection is given up.
const HEARTBEAT_WAIT: Duration = Duration::from_secs(3);
/// The wait before connecting again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Starts listening; the task ends when the last receiver is dropped.
pub(super) fn start(target: Target) -> watch::Receiver<Changes> {
    let (tx, rx) = watch::channel(Changes::default());
    let tx = Arc::new(tx);
    tokio::spawn(async move {
        let said_down = AtomicBool::new(false);
        loop {
            let ended = tokio::select! {
                _ = tx.closed() => return,
                ended = listen(&target, &tx, &said_down) => ended,
            };
            tx.send_if_modified(|c| std::mem::replace(&mut c.listening, false));
            if !said_down.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %ended,
                    "not listening for other instances' changes; polling meanwhile"
                );
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            }
        }
    });
    rx
}

/// Listens on one connection until it fails; why it did.
async fn listen(
    target: &Target,
    tx: &Arc<watch::Sender<Changes>>,
    said_down: &AtomicBool,
) -> StoreError {
    let on_notification = {
        let tx = tx.clone();
        move || tx.send_modify(|c| c.heard = c.heard.wrapping_add(1))
    };
    let (client, mut driver) = match target.connect(on_notification).await {
        Ok(connected) => connected,
        Err(e) => return e,
    };
    let _stop_driver = AbortOnDrop(driver.abort_handle());
    let checked = |query: &'static str| {
        let client = &client;
        async move {
            match tokio::time::timeout(HEARTBEAT_WAIT, client.batch_execute(query)).await {
                Ok(done) => done.map_err(StoreError::from),
                Err(_) => Err(StoreError::Unavailable(format!(
                    "the database did not answer within {} s",
                    HEARTBEAT_WAIT.as_secs()
                ))),
            }
        }
    };
    if let Err(e) = checked(LISTEN).await {
        return e;
    }
    // Connected: a poll now catches up on anything missed before.
    tx.send_modify(|c| {
        c.listening = true;
        c.heard = c.heard.wrapping_add(1);
    });
    if said_down.swap(false, Ordering::Relaxed) {
        tracing::info!("listening for other instances' changes again");
    }
    loop {
        tokio::select! {
            _ = &mut driver => {
                return StoreError::Unavailable("the listening connection closed".into());
            }
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        if let Err(e) = checked("").await {
            return e;
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
