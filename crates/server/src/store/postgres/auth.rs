//! Users, sessions, refresh tokens, revocations and signing keys in
//! PostgreSQL: the auth half of [`Store`](crate::store::Store). Writes run
//! in the caller's transaction, reads on a pooled connection.

use deadpool_postgres::{GenericClient, Transaction};
use latchkey_protocol::Reason;
use tokio_postgres::Row;

use super::{
    KEYS_LOCK, REVOCATIONS_LOCK, execute, lock, query, query_one, query_opt, storable, text,
};
use crate::store::notes::reason_from_db;
use crate::store::{
    DeletedUser, KeyRecord, LAST_SEEN_STEP_SECS, REFRESH_RETRY_WINDOW_SECS, RefreshOutcome, Result,
    Revocation, SessionListing, SessionRecord, StoreError, TokenHash, UserRecord,
};

const SESSION_SELECT: &str = "SELECT s.id, s.user_id, u.username, s.created_at, s.expires_at, \
     s.revoked_reason FROM sessions s JOIN users u ON u.id = s.user_id";

const USER_SELECT: &str = "SELECT id, username, password_hash, created_at FROM users";

fn session_row(r: &Row) -> Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        username: r.try_get(2)?,
        created_at: r.try_get(3)?,
        expires_at: r.try_get(4)?,
        revoked: reason_from_db(r.try_get(5)?),
    })
}

fn user_row(r: &Row) -> Result<UserRecord> {
    Ok(UserRecord {
        id: r.try_get(0)?,
        username: r.try_get(1)?,
        password_hash: r.try_get(2)?,
        created_at: r.try_get(3)?,
    })
}

/// Adds `user`; [`StoreError::UserExists`] if the name is taken (also by
/// another instance at the same moment).
pub(super) async fn create_user(tx: &Transaction<'_>, user: &UserRecord) -> Result<()> {
    let added = execute(
        tx,
        "INSERT INTO users (id, username, password_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (username) DO NOTHING",
        &[
            &user.id,
            &user.username,
            &user.password_hash,
            &user.created_at,
        ],
    )
    .await?;
    if added == 0 {
        return Err(StoreError::UserExists(user.username.clone()));
    }
    Ok(())
}

pub(super) async fn set_password(
    tx: &Transaction<'_>,
    username: &str,
    password_hash: &str,
) -> Result<bool> {
    let changed = execute(
        tx,
        "UPDATE users SET password_hash = $2 WHERE username = $1",
        &[&username, &password_hash],
    )
    .await?;
    Ok(changed > 0)
}

pub(super) async fn find_user(
    c: &impl GenericClient,
    username: &str,
) -> Result<Option<UserRecord>> {
    if !storable(username) {
        return Ok(None);
    }
    let sql = format!("{USER_SELECT} WHERE username = $1");
    query_opt(c, &sql, &[&username])
        .await?
        .as_ref()
        .map(user_row)
        .transpose()
}

/// Every user, by name in SQLite's order (bytewise, not the locale's).
pub(super) async fn list_users(c: &impl GenericClient) -> Result<Vec<UserRecord>> {
    let sql = format!("{USER_SELECT} ORDER BY username COLLATE \"C\"");
    query(c, &sql, &[]).await?.iter().map(user_row).collect()
}

pub(super) async fn create_session(
    tx: &Transaction<'_>,
    session: &SessionRecord,
    refresh: &TokenHash,
    device_name: Option<&str>,
) -> Result<()> {
    execute(
        tx,
        "INSERT INTO sessions (id, user_id, created_at, expires_at, device_name, last_seen_at) \
         VALUES ($1, $2, $3, $4, $5, $3)",
        &[
            &session.id,
            &session.user_id,
            &session.created_at,
            &session.expires_at,
            &device_name.map(str::as_bytes),
        ],
    )
    .await?;
    execute(
        tx,
        "INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES ($1, $2, $3)",
        &[&&refresh[..], &session.id, &session.created_at],
    )
    .await?;
    Ok(())
}

pub(super) async fn get_session(c: &impl GenericClient, id: &str) -> Result<Option<SessionRecord>> {
    if !storable(id) {
        return Ok(None);
    }
    let sql = format!("{SESSION_SELECT} WHERE s.id = $1");
    query_opt(c, &sql, &[&id])
        .await?
        .as_ref()
        .map(session_row)
        .transpose()
}

/// Marks these sessions, just revoked, as revocations for every instance
/// to poll: numbered under [`REVOCATIONS_LOCK`], in commit order.
async fn announce(
    tx: &Transaction<'_>,
    sessions: &[String],
    reason: Reason,
    now: i64,
) -> Result<()> {
    if sessions.is_empty() {
        return Ok(());
    }
    lock(tx, REVOCATIONS_LOCK).await?;
    execute(
        tx,
        "INSERT INTO revocations (session_id, reason, at) \
         SELECT sid, $2, $3 FROM unnest($1::text[]) AS sid",
        &[&sessions, &reason.as_str(), &now],
    )
    .await?;
    Ok(())
}

/// Revokes one session; true if it was live until now.
pub(super) async fn revoke(
    tx: &Transaction<'_>,
    session_id: &str,
    reason: Reason,
    now: i64,
) -> Result<bool> {
    if !storable(session_id) {
        return Ok(false);
    }
    let changed = execute(
        tx,
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
         WHERE id = $1 AND revoked_at IS NULL",
        &[&session_id, &now, &reason.as_str()],
    )
    .await?;
    if changed > 0 {
        announce(tx, &[session_id.to_owned()], reason, now).await?;
    }
    Ok(changed > 0)
}

/// Moves a session's `last_seen_at` to `now`, unless it moved less than
/// [`LAST_SEEN_STEP_SECS`] ago.
pub(super) async fn touch(
    c: &impl GenericClient,
    session_id: &str,
    now: i64,
) -> Result<Option<Reason>> {
    if !storable(session_id) {
        return Ok(Some(Reason::Revoked));
    }
    let row = query_opt(
        c,
        "WITH seen AS (UPDATE sessions SET last_seen_at = $2 \
         WHERE id = $1 AND last_seen_at < $2::int8 - $3::int8) \
         SELECT revoked_reason FROM sessions WHERE id = $1",
        &[&session_id, &now, &LAST_SEEN_STEP_SECS],
    )
    .await?;
    Ok(match row {
        Some(row) => reason_from_db(row.try_get(0)?),
        None => Some(Reason::Revoked),
    })
}

/// [`Store::refresh`](crate::store::Store::refresh) in its transaction:
/// rotates `presented` to `next`, with reuse detection and the retry
/// exception, exactly as the SQLite store decides.
pub(super) async fn rotate_refresh(
    tx: &Transaction<'_>,
    presented: &TokenHash,
    next: &TokenHash,
    now: i64,
) -> Result<RefreshOutcome> {
    let sql =
        format!("{SESSION_SELECT} JOIN refresh_tokens t ON t.session_id = s.id WHERE t.hash = $1");
    let Some(row) = query_opt(tx, &sql, &[&&presented[..]]).await? else {
        return Ok(RefreshOutcome::Refused(Reason::Invalid));
    };
    let session = session_row(&row)?;
    if let Some(reason) = session.revoked {
        return Ok(RefreshOutcome::Refused(reason));
    }
    if session.expires_at <= now {
        return Ok(RefreshOutcome::Refused(Reason::Expired));
    }
    // Spent by one conditional update: of several instances presenting the
    // token at once, exactly one changes the row.
    let spent = execute(
        tx,
        "UPDATE refresh_tokens SET used_at = $2 \
         WHERE hash = $1 AND used_at IS NULL AND retired_at IS NULL",
        &[&&presented[..], &now],
    )
    .await?
        > 0;
    if !spent && !spend_again(tx, presented, now).await? {
        revoke(tx, &session.id, Reason::Reused, now).await?;
        return Ok(RefreshOutcome::Refused(Reason::Reused));
    }
    execute(
        tx,
        "INSERT INTO refresh_tokens (hash, session_id, parent, created_at) \
         VALUES ($1, $2, $3, $4)",
        &[&&next[..], &session.id, &&presented[..], &now],
    )
    .await?;
    touch(tx, &session.id, now).await?;
    Ok(RefreshOutcome::Rotated(session))
}

/// `presented` could not be spent as a live token: it was spent (perhaps
/// by another instance a moment ago) or retired. Whether it may be spent
/// again as a retry, which retires its successor; false is reuse.
async fn spend_again(tx: &Transaction<'_>, presented: &TokenHash, now: i64) -> Result<bool> {
    // The token's row is taken first, so that those who lost the race for
    // it take turns, each seeing what the one before did.
    let Some(row) = query_opt(
        tx,
        "SELECT used_at, retired_at FROM refresh_tokens WHERE hash = $1 FOR UPDATE",
        &[&&presented[..]],
    )
    .await?
    else {
        return Ok(false);
    };
    let used_at: Option<i64> = row.try_get(0)?;
    let retired_at: Option<i64> = row.try_get(1)?;
    // Retired by a retry of its parent, so someone else went on with the
    // session: two parties hold it.
    if retired_at.is_some() {
        return Ok(false);
    }
    match used_at {
        // Whoever was spending it rolled back: it is live, and ours.
        None => {
            execute(
                tx,
                "UPDATE refresh_tokens SET used_at = $2 WHERE hash = $1",
                &[&&presented[..], &now],
            )
            .await?;
            Ok(true)
        }
        // A retry only if it is the token spent last, its successor was
        // never used, and it is recent.
        Some(used_at) if now - used_at <= REFRESH_RETRY_WINDOW_SECS => {
            let retired = execute(
                tx,
                "UPDATE refresh_tokens SET retired_at = $2 \
                 WHERE parent = $1 AND retired_at IS NULL AND used_at IS NULL",
                &[&&presented[..], &now],
            )
            .await?;
            Ok(retired > 0)
        }
        Some(_) => Ok(false),
    }
}

/// Revokes the session a refresh token (live or spent) belongs to.
pub(super) async fn revoke_by_refresh(
    tx: &Transaction<'_>,
    token: &TokenHash,
    now: i64,
) -> Result<Option<String>> {
    let Some(row) = query_opt(
        tx,
        "SELECT session_id FROM refresh_tokens WHERE hash = $1",
        &[&&token[..]],
    )
    .await?
    else {
        return Ok(None);
    };
    let sid: String = row.try_get(0)?;
    revoke(tx, &sid, Reason::Revoked, now).await?;
    Ok(Some(sid))
}

/// The id of the user named `username`, if there is one, with the user's
/// row locked until commit (no push of theirs runs meanwhile).
async fn user_id_of(tx: &Transaction<'_>, username: &str) -> Result<Option<String>> {
    query_opt(
        tx,
        "SELECT id FROM users WHERE username = $1 FOR UPDATE",
        &[&username],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()
    .map_err(StoreError::from)
}

/// Revokes every session of a user not yet revoked (expired or not).
pub(super) async fn revoke_user(
    tx: &Transaction<'_>,
    username: &str,
    reason: Reason,
    now: i64,
) -> Result<Option<usize>> {
    let Some(user_id) = user_id_of(tx, username).await? else {
        return Ok(None);
    };
    let sids = ids(query(
        tx,
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
         WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
        &[&user_id, &now, &reason.as_str()],
    )
    .await?)?;
    announce(tx, &sids, reason, now).await?;
    Ok(Some(sids.len()))
}

/// The first column of `rows`, as ids.
fn ids(rows: Vec<Row>) -> Result<Vec<String>> {
    rows.iter()
        .map(|r| r.try_get(0).map_err(StoreError::from))
        .collect()
}

/// The user's sessions neither revoked nor expired, most recently seen
/// first (ties in SQLite's order).
pub(super) async fn live_sessions(
    c: &impl GenericClient,
    user_id: &str,
    now: i64,
) -> Result<Vec<SessionListing>> {
    let rows = query(
        c,
        "SELECT id, device_name, created_at, last_seen_at FROM sessions \
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
         ORDER BY last_seen_at DESC, created_at DESC, id COLLATE \"C\"",
        &[&user_id, &now],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SessionListing {
                id: r.try_get(0)?,
                device_name: r
                    .try_get::<_, Option<Vec<u8>>>(1)?
                    .map(|name| text(name, "a device name"))
                    .transpose()?,
                created_at: r.try_get(2)?,
                last_seen_at: r.try_get(3)?,
            })
        })
        .collect()
}

/// Revokes `session_id` if it is a live session of `user_id`.
pub(super) async fn revoke_own_session(
    tx: &Transaction<'_>,
    user_id: &str,
    session_id: &str,
    now: i64,
) -> Result<bool> {
    if !storable(session_id) {
        return Ok(false);
    }
    let live = query_opt(
        tx,
        "SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2 \
         AND revoked_at IS NULL AND expires_at > $3",
        &[&session_id, &user_id, &now],
    )
    .await?;
    match live {
        Some(_) => revoke(tx, session_id, Reason::Revoked, now).await,
        None => Ok(false),
    }
}

/// Revokes every live session of `user_id` but `keep`; returns their ids.
pub(super) async fn revoke_all_but(
    tx: &Transaction<'_>,
    user_id: &str,
    keep: Option<&str>,
    reason: Reason,
    now: i64,
) -> Result<Vec<String>> {
    let sids = ids(query(
        tx,
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $4 \
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
         AND id IS DISTINCT FROM $3 RETURNING id",
        &[&user_id, &now, &keep, &reason.as_str()],
    )
    .await?)?;
    announce(tx, &sids, reason, now).await?;
    Ok(sids)
}

pub(super) async fn replace_password(
    tx: &Transaction<'_>,
    user_id: &str,
    password_hash: &str,
    keep: Option<&str>,
    now: i64,
) -> Result<Vec<String>> {
    execute(
        tx,
        "UPDATE users SET password_hash = $2 WHERE id = $1",
        &[&user_id, &password_hash],
    )
    .await?;
    revoke_all_but(tx, user_id, keep, Reason::Revoked, now).await
}

/// Deletes a user with their notes, history, op results and sessions.
pub(super) async fn delete_user(
    tx: &Transaction<'_>,
    username: &str,
    now: i64,
) -> Result<Option<DeletedUser>> {
    let Some(user_id) = user_id_of(tx, username).await? else {
        return Ok(None);
    };
    // Revoked first, so that every server learns of it (the revocations
    // stay) before the sessions go.
    revoke_all_but(tx, &user_id, None, Reason::Revoked, now).await?;
    execute(
        tx,
        "DELETE FROM refresh_tokens WHERE session_id IN \
         (SELECT id FROM sessions WHERE user_id = $1)",
        &[&user_id],
    )
    .await?;
    let delete = |table: &'static str| {
        let user_id = &user_id;
        async move {
            let sql = format!("DELETE FROM {table} WHERE user_id = $1");
            Ok::<_, StoreError>(execute(tx, &sql, &[user_id]).await? as usize)
        }
    };
    let deleted = DeletedUser {
        sessions: delete("sessions").await?,
        notes: delete("notes").await?,
        versions: delete("note_versions").await?,
        op_results: delete("ops").await?,
    };
    execute(tx, "DELETE FROM users WHERE id = $1", &[&user_id]).await?;
    Ok(Some(deleted))
}

pub(super) async fn revocations_since(c: &impl GenericClient, seq: i64) -> Result<Vec<Revocation>> {
    let rows = query(
        c,
        "SELECT seq, session_id, reason FROM revocations WHERE seq > $1 ORDER BY seq",
        &[&seq],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Revocation::stored(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
            ))
        })
        .collect()
}

/// Every signing key, oldest first.
pub(super) async fn keys(c: &impl GenericClient) -> Result<Vec<KeyRecord>> {
    let rows = query(
        c,
        "SELECT kid, secret, created_at, retired_at FROM signing_keys ORDER BY seq",
        &[],
    )
    .await?;
    rows.iter()
        .map(|r| KeyRecord::stored(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
        .collect()
}

/// Adds `key` as the current key and retires the previous one: one
/// rotation at a time, numbered in commit order.
pub(super) async fn rotate_key(tx: &Transaction<'_>, key: &KeyRecord, now: i64) -> Result<()> {
    lock(tx, KEYS_LOCK).await?;
    execute(
        tx,
        "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL",
        &[&now],
    )
    .await?;
    execute(
        tx,
        "INSERT INTO signing_keys (kid, secret, created_at) VALUES ($1, $2, $3)",
        &[&key.kid, &&key.secret[..], &key.created_at],
    )
    .await?;
    Ok(())
}

/// The last revocation's number (0 if none).
pub(super) async fn last_revocation(c: &impl GenericClient) -> Result<i64> {
    let row = query_one(c, "SELECT coalesce(max(seq), 0) FROM revocations", &[]).await?;
    Ok(row.try_get(0)?)
}
