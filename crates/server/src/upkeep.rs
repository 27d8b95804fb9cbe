//! The background upkeep of a running server: revocations, rev changes and
//! key rotations made by other processes are polled for (so they apply
//! within a second; at once on a store that announces them), and caches
//! and old op results are pruned now and then.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::state::AppState;
use crate::store::Changes;

/// How often the store is polled for other processes' changes, unless it
/// announces them.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How often a store that announces its changes is polled all the same: a
/// backstop, in case an announcement goes astray.
const POLL_BACKSTOP: Duration = Duration::from_secs(5);
/// How long an announcement waits before its poll, so that a burst of
/// them (every push of every instance is one) makes one poll.
const GATHER: Duration = Duration::from_millis(20);
/// How often the caches are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often old op results are pruned.
const OP_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Starts the upkeep tasks; they end when `stop` turns true (or its sender
/// is gone).
pub fn spawn(state: AppState, stop: watch::Receiver<bool>) {
    tokio::spawn(poll(state.clone(), stop.clone()));
    tokio::spawn(prune_ops(state, stop));
}

/// Polls for revocations, rev changes and key rotations made by other
/// processes, when the store announces some or else every [`POLL_EVERY`],
/// and prunes caches now and then.
async fn poll(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut changes = state.store.changes();
    let mut next_prune = Instant::now() + PRUNE_EVERY;
    loop {
        let listening = changes.as_ref().is_some_and(|c| c.borrow().listening);
        let wait = if listening { POLL_BACKSTOP } else { POLL_EVERY };
        let heard = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(wait) => None,
            heard = announced(&mut changes) => Some(heard),
        };
        match heard {
            None => {}
            Some(true) => {
                tokio::time::sleep(GATHER).await;
                if let Some(c) = &mut changes {
                    c.borrow_and_update();
                }
            }
            Some(false) => changes = None,
        }
        if let Err(e) = state.refresh_from_store().await {
            tracing::warn!(error = %e, "polling the database failed");
        }
        if Instant::now() >= next_prune {
            next_prune = Instant::now() + PRUNE_EVERY;
            if let Err(e) = state.prune().await {
                tracing::warn!(error = %e, "pruning failed");
            }
        }
    }
}

/// Waits for the store's next announcement: true when one came, false when
/// the store stopped announcing; never ends if it never did.
async fn announced(changes: &mut Option<watch::Receiver<Changes>>) -> bool {
    match changes {
        Some(c) => c.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Prunes old op results (see [`AppState::prune_ops`]) now and then, in its
/// own task so that a long prune never delays the revocation polling.
async fn prune_ops(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(OP_PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            pruned = state.prune_ops(crate::clock::now()) => match pruned {
                Ok(0) => {}
                Ok(n) => tracing::info!(ops = n, "pruned old op results"),
                Err(e) => tracing::warn!(error = %e, "pruning op results failed"),
            },
        }
    }
}
