//! The background upkeep of a running server: revocations and key rotations
//! made by other processes are polled (so they apply within a second), and
//! caches and old op results are pruned now and then.

use std::time::Duration;

use tokio::sync::watch;

use crate::state::AppState;

/// How often the database is polled for revocations and key rotations.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Polls between two prunings of the caches (a minute).
const PRUNE_EVERY_POLLS: u64 = 240;
/// How often old op results are pruned.
const OP_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Starts the upkeep tasks; they end when `stop` turns true (or its sender
/// is gone).
pub fn spawn(state: AppState, stop: watch::Receiver<bool>) {
    tokio::spawn(poll(state.clone(), stop.clone()));
    tokio::spawn(prune_ops(state, stop));
}

/// Polls for revocations and key rotations made by other processes, and
/// prunes caches now and then.
async fn poll(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = state.refresh_from_store().await {
            tracing::warn!(error = %e, "polling the database failed");
        }
        rounds += 1;
        if rounds.is_multiple_of(PRUNE_EVERY_POLLS)
            && let Err(e) = state.prune().await
        {
            tracing::warn!(error = %e, "pruning failed");
        }
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
