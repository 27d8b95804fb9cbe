//! Sign-in throttling in PostgreSQL: the attempts of one client address
//! are decided one at a time (an advisory lock on the address, held to
//! commit), so parallel guesses through any number of instances never pass
//! the limits. The rules are the shared ones ([`AttemptCounts`]).

use deadpool_postgres::GenericClient;

use super::{execute, query};
use crate::store::{
    AttemptCounts, AttemptKey, AttemptLimits, AttemptOutcome, AttemptStart, Result,
};

/// The advisory-lock class of client addresses (the two-number form, so
/// it never meets the store's one-number locks).
const ADDRESS_LOCK_CLASS: i32 = 0x6c6b;

pub(super) async fn begin(
    tx: &impl GenericClient,
    key: &AttemptKey,
    limits: AttemptLimits,
    now: i64,
) -> Result<AttemptStart> {
    execute(
        tx,
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&ADDRESS_LOCK_CLASS, &key.address],
    )
    .await?;
    let since = now - limits.window;
    let user = key.user.as_slice();
    // (started_at, state, the user's): state 0 in flight, 1 failed, 2
    // failed and forgiven for the user.
    let rows = query(
        tx,
        "SELECT started_at, state, user_key = $2 FROM login_attempts \
         WHERE address = $1 AND started_at > $3",
        &[&key.address, &user, &since],
    )
    .await?;
    let mut counts = AttemptCounts::default();
    for row in rows {
        let (at, state, mine): (i64, i16, bool) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        match state {
            0 => {
                counts.address_in_flight += 1;
                counts.user_in_flight += usize::from(mine);
            }
            _ => {
                counts.address_failed.push(at);
                if mine && state == 1 {
                    counts.user_failed.push(at);
                }
            }
        }
    }
    if let Some(verdict) = counts.verdict(limits, now) {
        return Ok(verdict);
    }
    let row = super::query_one(
        tx,
        "INSERT INTO login_attempts (user_key, address, started_at, state) \
         VALUES ($1, $2, $3, 0) RETURNING id",
        &[&user, &key.address, &now],
    )
    .await?;
    Ok(AttemptStart::Started(row.try_get(0)?))
}

pub(super) async fn end(tx: &impl GenericClient, id: i64, outcome: AttemptOutcome) -> Result<()> {
    match outcome {
        AttemptOutcome::Failed => {
            execute(
                tx,
                "UPDATE login_attempts SET state = 1 WHERE id = $1 AND state = 0",
                &[&id],
            )
            .await?;
        }
        AttemptOutcome::Succeeded => {
            execute(
                tx,
                "UPDATE login_attempts SET state = 2 WHERE state = 1 AND \
                 (user_key, address) = (SELECT user_key, address FROM login_attempts WHERE id = $1)",
                &[&id],
            )
            .await?;
            execute(tx, "DELETE FROM login_attempts WHERE id = $1", &[&id]).await?;
        }
        AttemptOutcome::Abandoned => {
            execute(tx, "DELETE FROM login_attempts WHERE id = $1", &[&id]).await?;
        }
    }
    Ok(())
}
