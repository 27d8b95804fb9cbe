//! The PostgreSQL backend (`--db postgres://...`): the whole state of any
//! number of identical server instances on one database. Nothing that
//! decides correctness lives in one instance's memory:
//! * a push first locks its user's row (`SELECT ... FOR UPDATE`), so one
//!   user's pushes take turns whichever instance takes them, and revs are
//!   allocated and committed in order;
//! * a refresh token is spent by one conditional `UPDATE`: of several
//!   instances presenting it at once exactly one spends it; the others then
//!   take the token's row in turn and apply the retry rule, as SQLite's one
//!   writer would have;
//! * what other instances poll for ([`Store::revocations_since`],
//!   [`Store::rev_changes_since`], [`Store::keys_version`]) is numbered in
//!   commit order. A bare sequence hands out numbers in one order and
//!   commits them in another: a poll could see 6 before 5 commits and never
//!   ask for 5 again. So each number is taken under an advisory lock of its
//!   kind held until commit. For pushes that serializes only their last
//!   statement and commit; the rest runs in parallel.
//!
//! Every write is one READ COMMITTED transaction, run again from the start
//! (a few times) when it loses a serialization race or a deadlock. Every
//! read is one statement: one snapshot. Statements are prepared once per
//! pooled connection. Every call waits a bounded time for a connection
//! and for the database's answers ([`ANSWER_WAIT`]): past it, the database
//! is unavailable (a 503), never a request that hangs.

mod attempts;
mod auth;
mod connect;
mod listen;
mod schema;
mod sync;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Client, GenericClient, Pool};
use latchkey_protocol::{NoteVersion, Op, PushResponse, Reason};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    AttemptKey, AttemptLimits, AttemptOutcome, AttemptStart, Changes, DeletedUser, KeyRecord,
    PullOutcome, RefreshOutcome, Result, RevChange, Revocation, SessionListing, SessionRecord,
    Store, StoreError, TokenHash, UserRecord, without_password,
};

pub use connect::describe;

/// Advisory locks, each "latchk" and a number: taken before a number of
/// their kind, held until commit (see the module's documentation).
const REVOCATIONS_LOCK: i64 = 0x6c61_7463_686b_0002;
const REV_CHANGES_LOCK: i64 = 0x6c61_7463_686b_0003;
const KEYS_LOCK: i64 = 0x6c61_7463_686b_0004;

/// How many times a transaction that lost a race is run again.
const RACE_RETRIES: u32 = 4;

/// Runs `$work`, an expression using the transaction `$tx`, in a new
/// transaction on a pooled connection, and commits it; runs it again from
/// the start when it lost a race to another transaction. The database's
/// answers are awaited at most [`ANSWER_WAIT`] (or the `within` given) in
/// all, see [`PgStore::answered`]. (A macro, not a function taking a closure: the
/// work borrows the transaction, and a closure returning a future that
/// borrows its argument cannot be written so that the future stays
/// `Send`.)
macro_rules! in_transaction {
    ($store:expr, |$tx:ident| $work:expr) => {
        in_transaction!($store, within ANSWER_WAIT, |$tx| $work)
    };
    ($store:expr, within $wait:expr, |$tx:ident| $work:expr) => {{
        let mut attempt = 0;
        loop {
            let outcome = async {
                let mut client = $store.client().await?;
                let since = std::time::Instant::now();
                let done = tokio::time::timeout($wait, async {
                    let $tx = client.transaction().await?;
                    let out = $work;
                    $tx.commit().await?;
                    Ok::<_, StoreError>(out)
                })
                .await;
                $store.answered(done, client, since, $wait)
            }
            .await;
            match outcome {
                Err(e) if attempt < RACE_RETRIES && connect::lost_race(&e) => {
                    attempt += 1;
                    tokio::time::sleep(race_backoff(attempt)).await;
                }
                other => break other,
            }
        }
    }};
}

/// Runs `$work`, an expression using `$c`, a pooled connection, awaiting
/// the database's answers at most [`ANSWER_WAIT`] in all (see
/// [`PgStore::answered`]).
macro_rules! on_connection {
    ($store:expr, |$c:ident| $work:expr) => {
        on_connection!($store, within ANSWER_WAIT, |$c| $work)
    };
    ($store:expr, within $wait:expr, |$c:ident| $work:expr) => {{
        let client = $store.client().await?;
        let since = std::time::Instant::now();
        let done = tokio::time::timeout($wait, async {
            let $c = &client;
            $work
        })
        .await;
        $store.answered(done, client, since, $wait)
    }};
}

/// How long a store call waits for the database's answers, once it has a
/// connection, before it gives up and the request is answered 503 (the
/// pool's own waits are as long: see `connect.rs`). tokio-postgres has no
/// time limit of its own: a connection whose peer vanished (a network
/// cut, a failover to another host, a firewall that forgot it) would wait
/// for an answer for as long as the kernel keeps the socket, hours, and so
/// would every request given that connection after it.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The same for what may touch many rows at once: the administrator's
/// deletion of a user (every note and version of theirs, in one
/// transaction) and the pruning of old sign-in attempts.
const LONG_WAIT: Duration = Duration::from_secs(600);

/// A short random wait before running a transaction again, longer after
/// each loss, so that the two losers of a deadlock do not meet again.
fn race_backoff(attempt: u32) -> std::time::Duration {
    use rand::Rng as _;
    let ms = rand::thread_rng().gen_range(1..=10) * u64::from(attempt);
    std::time::Duration::from_millis(ms)
}

/// The store: a bounded pool of connections to one database.
pub struct PgStore {
    pool: Pool,
    target: connect::Target,
    /// Other instances' news ([`Store::changes`]), listened for from the
    /// first call on: a CLI command never asks, so never listens.
    changes: std::sync::OnceLock<tokio::sync::watch::Receiver<Changes>>,
}

impl PgStore {
    /// Connects to the database `url` names and migrates it. Fails if the
    /// URL is wrong, the server cannot be reached, or the database is not
    /// UTF-8.
    pub async fn open(url: &str) -> Result<Self> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: without_password(url),
            source,
        };
        let target = connect::target(url).map_err(|e| open_err(Box::new(e)))?;
        let pool = target.pool().map_err(|e| open_err(Box::new(e)))?;
        let opened = async {
            let mut client = pool.get().await?;
            let row = client
                .query_one("SELECT current_setting('server_encoding')", &[])
                .await?;
            let encoding: String = row.try_get(0)?;
            if encoding != "UTF8" {
                return Err(StoreError::Corrupt(format!(
                    "the database's encoding is {encoding}; it must be UTF8 \
                     (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
                )));
            }
            schema::migrate(&mut client).await
        };
        match opened.await {
            Ok(()) => Ok(Self {
                pool,
                target,
                changes: Default::default(),
            }),
            Err(e @ StoreError::TooNew { .. }) => Err(e),
            Err(e) => Err(open_err(Box::new(e))),
        }
    }

    /// The outcome of a call on `client` that began waiting for the
    /// database's answers at `since`, at most `wait`: its own, or, when the
    /// database did not answer in time, unavailable. Then the connection is
    /// closed instead of going back to the pool (its peer may be gone;
    /// whatever it was doing on the server is rolled back when the server
    /// sees it closed, or ended there after 10 s idle: see `connect.rs`),
    /// and so are the pooled connections nobody used since `since`: they
    /// may be as dead (after a failover, all are), and each would cost the
    /// next call given it another wait. A write given up on during its
    /// commit may have committed all the same: the client retries it, and
    /// every write is safe to retry (op ids, the refresh token's retry
    /// rule).
    fn answered<T>(
        &self,
        done: std::result::Result<Result<T>, tokio::time::error::Elapsed>,
        client: Client,
        since: std::time::Instant,
        wait: Duration,
    ) -> Result<T> {
        match done {
            Ok(Err(e)) if connect::stale_statement(&e) => {
                // The schema changed under the statements the connections
                // prepared (another instance migrated it, an upgrade): they
                // are prepared again, and the client asks again.
                self.pool.manager().statement_caches.clear();
                Err(StoreError::Unavailable(format!(
                    "the database's schema changed under a prepared statement ({e}); \
                     prepared again for the next call"
                )))
            }
            Ok(outcome) => outcome,
            Err(_) => {
                // Out of the pool, and dropped: their connection tasks end
                // and their sockets are closed.
                drop(deadpool_postgres::Object::take(client));
                self.pool
                    .retain(|_, used| used.recycled.unwrap_or(used.created) > since);
                Err(StoreError::Unavailable(format!(
                    "no answer from the database within {} s",
                    wait.as_secs()
                )))
            }
        }
    }

    /// A pooled connection; waits a bounded time for one.
    pub(in crate::store) async fn client(&self) -> Result<Client> {
        Ok(self.pool.get().await?)
    }
}

/// Runs `sql` (prepared once per connection) with `params`; its rows.
async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?)
}

/// Like [`query`], for at most one row.
async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&statement, params).await?)
}

/// Like [`query`], for exactly one row.
async fn query_one(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_one(&statement, params).await?)
}

/// Like [`query`], for a statement's count of rows changed.
async fn execute(c: &impl GenericClient, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.execute(&statement, params).await?)
}

/// Holds the advisory lock `key` until the transaction ends.
async fn lock(c: &impl GenericClient, key: i64) -> Result<()> {
    execute(c, "SELECT pg_advisory_xact_lock($1)", &[&key]).await?;
    Ok(())
}

/// Stored UTF-8 (a BYTEA column) as text.
fn text(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| StoreError::Corrupt(format!("{what} is not UTF-8")))
}

/// Whether `s` can be a stored id or name: PostgreSQL's TEXT holds no NUL,
/// so one with a NUL names nothing (and must not reach a query, which
/// would fail).
fn storable(s: &str) -> bool {
    !s.contains('\0')
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<UserRecord> {
        let user = UserRecord::new(username, password_hash, now);
        in_transaction!(self, |tx| auth::create_user(&tx, &user).await?)?;
        Ok(user)
    }

    async fn set_password(&self, username: &str, password_hash: &str) -> Result<bool> {
        in_transaction!(self, |tx| auth::set_password(&tx, username, password_hash)
            .await?)
    }

    async fn find_user(&self, username: &str) -> Result<Option<UserRecord>> {
        on_connection!(self, |c| auth::find_user(c, username).await)
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        on_connection!(self, |c| auth::list_users(c).await)
    }

    async fn create_session(
        &self,
        user: &UserRecord,
        session_id: &str,
        refresh: TokenHash,
        device_name: Option<&str>,
        now: i64,
        expires_at: i64,
    ) -> Result<SessionRecord> {
        let record = SessionRecord::new(user, session_id, now, expires_at);
        in_transaction!(self, |tx| auth::create_session(
            &tx,
            &record,
            &refresh,
            device_name
        )
        .await?)?;
        Ok(record)
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        on_connection!(self, |c| auth::get_session(c, session_id).await)
    }

    async fn refresh(
        &self,
        presented: TokenHash,
        next: TokenHash,
        now: i64,
    ) -> Result<RefreshOutcome> {
        in_transaction!(self, |tx| auth::rotate_refresh(&tx, &presented, &next, now)
            .await?)
    }

    async fn revoke_session(&self, session_id: &str, reason: Reason, now: i64) -> Result<bool> {
        in_transaction!(self, |tx| auth::revoke(&tx, session_id, reason, now)
            .await?)
    }

    async fn revoke_by_refresh(&self, token: TokenHash, now: i64) -> Result<Option<String>> {
        in_transaction!(self, |tx| auth::revoke_by_refresh(&tx, &token, now).await?)
    }

    async fn revoke_user(&self, username: &str, reason: Reason, now: i64) -> Result<Option<usize>> {
        in_transaction!(self, |tx| auth::revoke_user(&tx, username, reason, now)
            .await?)
    }

    async fn touch_session(&self, session_id: &str, now: i64) -> Result<Option<Reason>> {
        on_connection!(self, |c| auth::touch(c, session_id, now).await)
    }

    async fn live_sessions(&self, user_id: &str, now: i64) -> Result<Vec<SessionListing>> {
        on_connection!(self, |c| auth::live_sessions(c, user_id, now).await)
    }

    async fn revoke_own_session(&self, user_id: &str, session_id: &str, now: i64) -> Result<bool> {
        in_transaction!(self, |tx| auth::revoke_own_session(
            &tx, user_id, session_id, now
        )
        .await?)
    }

    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: &str,
        now: i64,
    ) -> Result<Vec<String>> {
        in_transaction!(self, |tx| auth::revoke_all_but(
            &tx,
            user_id,
            Some(keep),
            Reason::Revoked,
            now
        )
        .await?)
    }

    async fn replace_password(
        &self,
        user_id: &str,
        password_hash: &str,
        keep: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>> {
        in_transaction!(self, |tx| auth::replace_password(
            &tx,
            user_id,
            password_hash,
            keep,
            now
        )
        .await?)
    }

    async fn delete_user(&self, username: &str, now: i64) -> Result<Option<DeletedUser>> {
        in_transaction!(self, within LONG_WAIT, |tx| auth::delete_user(
            &tx, username, now
        )
        .await?)
    }

    async fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>> {
        on_connection!(self, |c| auth::revocations_since(c, seq).await)
    }

    async fn last_revocation(&self) -> Result<i64> {
        on_connection!(self, |c| auth::last_revocation(c).await)
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>> {
        on_connection!(self, |c| auth::keys(c).await)
    }

    async fn rotate_key(&self, key: KeyRecord, now: i64) -> Result<()> {
        in_transaction!(self, |tx| auth::rotate_key(&tx, &key, now).await?)
    }

    async fn keys_version(&self) -> Result<i64> {
        let row = on_connection!(self, |c| query_one(
            c,
            "SELECT coalesce(max(seq), 0) FROM signing_keys",
            &[]
        )
        .await)?;
        Ok(row.try_get(0)?)
    }

    async fn push(&self, user_id: &str, ops: Vec<Op>, now: i64) -> Result<PushResponse> {
        in_transaction!(self, |tx| sync::push(&tx, user_id, &ops, now).await?)
    }

    async fn pull(&self, user_id: &str, since: i64, limit: u32) -> Result<PullOutcome> {
        on_connection!(self, |c| sync::pull(c, user_id, since, limit).await)
    }

    async fn prune_ops(&self, before: i64, batch: usize) -> Result<usize> {
        let n = on_connection!(self, |c| execute(
            c,
            "DELETE FROM ops WHERE (user_id, op_id) IN \
             (SELECT user_id, op_id FROM ops WHERE created_at < $1 LIMIT $2)",
            &[&before, &(batch as i64)]
        )
        .await)?;
        Ok(n as usize)
    }

    async fn begin_attempt(
        &self,
        key: &AttemptKey,
        limits: AttemptLimits,
        now: i64,
    ) -> Result<AttemptStart> {
        in_transaction!(self, |tx| attempts::begin(&tx, key, limits, now).await?)
    }

    async fn end_attempt(&self, id: i64, outcome: AttemptOutcome) -> Result<()> {
        in_transaction!(self, |tx| attempts::end(&tx, id, outcome).await?)
    }

    async fn prune_attempts(&self, before: i64) -> Result<usize> {
        let n = on_connection!(self, within LONG_WAIT, |c| execute(
            c,
            "DELETE FROM login_attempts WHERE started_at < $1",
            &[&before]
        )
        .await)?;
        Ok(n as usize)
    }

    async fn latest_rev(&self, user_id: &str) -> Result<i64> {
        let row = on_connection!(self, |c| query_opt(
            c,
            "SELECT last_rev FROM users WHERE id = $1",
            &[&user_id]
        )
        .await)?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    async fn rev_changes_since(&self, seq: i64, limit: usize) -> Result<Vec<RevChange>> {
        on_connection!(self, |c| sync::rev_changes_since(c, seq, limit).await)
    }

    async fn last_rev_change(&self) -> Result<i64> {
        let row = on_connection!(self, |c| query_one(
            c,
            "SELECT coalesce(max(change_seq), 0) FROM users",
            &[]
        )
        .await)?;
        Ok(row.try_get(0)?)
    }

    async fn history(&self, user_id: &str, note_id: Uuid) -> Result<Option<Vec<NoteVersion>>> {
        on_connection!(self, |c| sync::history(c, user_id, note_id).await)
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<Changes>> {
        let rx = self
            .changes
            .get_or_init(|| listen::start(self.target.clone()));
        Some(rx.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use latchkey_testkit::{NewConnections, PgCluster, TcpLink, Upstream};

    use super::*;
    use crate::store::{Location, open};

    /// Two instances' stores on one fresh database; None (and why, said)
    /// when PostgreSQL is not installed.
    async fn two_instances() -> Option<(Arc<PgStore>, Arc<PgStore>)> {
        if !PgCluster::available() {
            println!("skipped: PostgreSQL is not installed");
            return None;
        }
        let url = PgCluster::shared().database();
        let a = Arc::new(PgStore::open(&url).await.unwrap());
        let b = Arc::new(PgStore::open(&url).await.unwrap());
        Some((a, b))
    }

    fn new_note() -> Op {
        Op::Upsert {
            op_id: Uuid::now_v7(),
            note_id: Uuid::now_v7(),
            base_rev: 0,
            title: "t".into(),
            body: "b".into(),
            client_time: 1,
            conflict_of: None,
        }
    }

    /// One user's pushes through two instances at once take turns: every
    /// push gets a block of revs of its own, and together they leave no
    /// gap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pushes_through_two_instances_take_revs_in_turn() {
        let Some((a, b)) = two_instances().await else {
            return;
        };
        let user = a.create_user("ann", "hash", 1).await.unwrap();
        let pushes: Vec<_> = (0..20)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let user_id = user.id.clone();
                tokio::spawn(async move {
                    let ops = (0..5).map(|_| new_note()).collect();
                    store.push(&user_id, ops, 2).await.unwrap()
                })
            })
            .collect();
        let mut cursors = Vec::new();
        for push in pushes {
            let answer = push.await.unwrap();
            let revs: Vec<i64> = answer.results.iter().map(|r| r.rev).collect();
            let first = answer.cursor - 4;
            assert_eq!(revs, (first..=answer.cursor).collect::<Vec<_>>());
            cursors.push(answer.cursor);
        }
        cursors.sort();
        assert_eq!(cursors, (1..=20).map(|i| i * 5).collect::<Vec<_>>());
        assert_eq!(b.latest_rev(&user.id).await.unwrap(), 100);
        let PullOutcome::Page(page) = a.pull(&user.id, 0, 1000).await.unwrap() else {
            panic!("ahead")
        };
        let revs: Vec<i64> = page.changes.iter().map(|c| c.rev).collect();
        assert_eq!(revs, (1..=100).collect::<Vec<_>>());
        // Twenty pushes, numbered as rev changes; the last one is seen.
        let changes = b.rev_changes_since(0, 10).await.unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].rev, changes[0].seq), (100, 20));
    }

    /// A refresh token presented to two instances at once, many times
    /// over: every presentation rotates it (one spends it, the others are
    /// retries), and exactly one of the new tokens stays live.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_token_presented_to_two_instances_at_once_is_spent_once() {
        let Some((a, b)) = two_instances().await else {
            return;
        };
        let user = a.create_user("ann", "hash", 1).await.unwrap();
        a.create_session(&user, "sid", [0; 32], None, 100, 10_000)
            .await
            .unwrap();
        let tries: Vec<_> = (1..=8u8)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { store.refresh([0; 32], [i; 32], 110).await.unwrap() })
            })
            .collect();
        for t in tries {
            assert!(matches!(t.await.unwrap(), RefreshOutcome::Rotated(_)));
        }
        let client = a.client().await.unwrap();
        let live = client
            .query(
                "SELECT hash FROM refresh_tokens WHERE parent = $1 \
                 AND used_at IS NULL AND retired_at IS NULL",
                &[&&[0u8; 32][..]],
            )
            .await
            .unwrap();
        assert_eq!(live.len(), 1);
        let live: Vec<u8> = live[0].get(0);
        // The live one goes on; the session was never taken for stolen.
        let next = b.refresh(live.try_into().unwrap(), [9; 32], 120).await;
        assert!(matches!(next.unwrap(), RefreshOutcome::Rotated(_)));
        assert_eq!(a.session("sid").await.unwrap().unwrap().revoked, None);
    }

    /// Instances started together on an empty database migrate it once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn instances_starting_together_migrate_once() {
        if !PgCluster::available() {
            println!("skipped: PostgreSQL is not installed");
            return;
        }
        let url = PgCluster::shared().database();
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgStore::open(&url).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            open.await.unwrap().unwrap();
        }
        let store = PgStore::open(&url).await.unwrap();
        let client = store.client().await.unwrap();
        let version: i64 = client
            .query_one("SELECT version FROM schema_version", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, schema::MIGRATIONS.len() as i64);
    }

    /// TLS to the database works, checks the server's certificate (one
    /// from an unknown CA is refused, clearly), and trusts a CA of
    /// `sslrootcert` besides the system's.
    #[tokio::test]
    async fn tls_to_the_database_checks_its_certificate() {
        if !PgCluster::available() {
            println!("skipped: PostgreSQL is not installed");
            return;
        }
        let Some((cluster, ca)) = PgCluster::start_tls() else {
            return;
        };
        let url = cluster.tcp_url(&cluster.database_name());
        let trusted = format!("{url}?sslmode=require&sslrootcert={}", ca.display());
        let store = PgStore::open(&trusted).await.unwrap();
        let client = store.client().await.unwrap();
        let row = client
            .query_one(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "the connection is not encrypted");
        assert!(row.get::<_, String>(1).starts_with("TLSv1."));
        // The system's roots alone do not know this CA.
        for url in [
            format!("{url}?sslmode=require"),
            format!("{url}?sslmode=prefer"),
        ] {
            let refused = PgStore::open(&url).await.err().unwrap().to_string();
            assert!(refused.starts_with("cannot open the database"), "{refused}");
            assert!(refused.contains("certificate"), "{refused}");
        }
        // Without TLS, asked for: plain over TCP.
        PgStore::open(&format!("{url}?sslmode=disable"))
            .await
            .unwrap();
    }

    /// Waits (bounded) until `rx` says the store is listening.
    async fn until_listening(rx: &mut tokio::sync::watch::Receiver<Changes>, listening: bool) {
        let wait = rx.wait_for(|c| c.listening == listening);
        tokio::time::timeout(std::time::Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("listening never turned {listening}"))
            .unwrap();
    }

    /// Waits (bounded) for the next announcement; whether one came.
    async fn announced(rx: &mut tokio::sync::watch::Receiver<Changes>) -> bool {
        rx.borrow_and_update();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A revocation, a push and a key rotation through one instance are
    /// announced to another at once; a read is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_one_instance_commits_is_announced_to_the_others() {
        let Some((a, b)) = two_instances().await else {
            return;
        };
        let mut rx = b.changes().unwrap();
        until_listening(&mut rx, true).await;
        let user = a.create_user("ann", "hash", 1).await.unwrap();
        a.create_session(&user, "sid", [0; 32], None, 100, 10_000)
            .await
            .unwrap();

        rx.borrow_and_update();
        a.latest_rev(&user.id).await.unwrap();
        a.pull(&user.id, 0, 10).await.unwrap();
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), rx.changed());
        assert!(quiet.await.is_err(), "a read was announced");

        let push = a.push(&user.id, vec![new_note()], 2);
        let (pushed, heard) = tokio::join!(push, announced(&mut rx));
        pushed.unwrap();
        assert!(heard, "a push was not announced");

        let revoke = a.revoke_session("sid", Reason::Revoked, 3);
        let (revoked, heard) = tokio::join!(revoke, announced(&mut rx));
        revoked.unwrap();
        assert!(heard, "a revocation was not announced");

        let key = KeyRecord {
            kid: "k2".into(),
            secret: [7; 32],
            created_at: 4,
            retired_at: None,
        };
        let rotate = a.rotate_key(key, 4);
        let (rotated, heard) = tokio::join!(rotate, announced(&mut rx));
        rotated.unwrap();
        assert!(heard, "a key rotation was not announced");
    }

    /// The listener finds a restarted database by itself and says so, and
    /// hearing again counts as news (what was missed is polled for).
    #[tokio::test]
    async fn listening_resumes_after_the_database_restarts() {
        if !PgCluster::available() {
            println!("skipped: PostgreSQL is not installed");
            return;
        }
        let cluster = PgCluster::start();
        let store = PgStore::open(&cluster.database()).await.unwrap();
        let mut rx = store.changes().unwrap();
        until_listening(&mut rx, true).await;
        let before = rx.borrow().heard;
        cluster.stop_server();
        until_listening(&mut rx, false).await;
        cluster.start_server();
        until_listening(&mut rx, true).await;
        assert!(rx.borrow().heard > before);
    }

    /// While the database is down the store says it is unavailable, soon
    /// and without hanging; once it is back the same store works again,
    /// and nothing committed before is lost.
    #[tokio::test]
    async fn a_database_restart_is_unavailable_then_recovered() {
        if !PgCluster::available() {
            println!("skipped: PostgreSQL is not installed");
            return;
        }
        let cluster = PgCluster::start();
        let at = Location::Postgres(cluster.database());
        let store = open(&at).await.unwrap();
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        store.push(&user.id, vec![new_note()], 2).await.unwrap();

        cluster.stop_server();
        let started = std::time::Instant::now();
        for _ in 0..3 {
            let down = store.latest_rev(&user.id).await;
            assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
            let down = store.push(&user.id, vec![new_note()], 3).await;
            assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // Opening the store at all is a clear failure too.
        let opened = open(&at).await.err().unwrap();
        assert!(
            opened.to_string().starts_with("cannot open the database"),
            "{opened}"
        );

        cluster.start_server();
        assert_eq!(store.latest_rev(&user.id).await.unwrap(), 1);
        let answer = store.push(&user.id, vec![new_note()], 4).await.unwrap();
        assert_eq!(answer.cursor, 2);
    }

    /// A database of the version before (schema 3) is brought up to date
    /// at start: its notes kept, pushes going on, notes' keys compared as
    /// bytes and no longer checked row by row against their user.
    #[tokio::test]
    async fn a_database_of_schema_3_is_migrated_keeping_its_notes() {
        if !PgCluster::available() {
            println!("skipped: PostgreSQL is not installed");
            return;
        }
        let cluster = PgCluster::shared();
        let url = cluster.database();
        for sql in &schema::MIGRATIONS[..3] {
            cluster.psql(&url, sql);
        }
        let note = Uuid::now_v7();
        cluster.psql(
            &url,
            &format!(
                "CREATE TABLE schema_version (version BIGINT NOT NULL); \
                 INSERT INTO schema_version VALUES (3); \
                 INSERT INTO users (id, username, password_hash, created_at, last_rev) \
                 VALUES ('u1', 'ann', 'hash', 1, 1); \
                 INSERT INTO notes VALUES ('u1', '{note}', 1, 'Plan', 'the text', false, 1, NULL)"
            ),
        );
        let store = PgStore::open(&url).await.unwrap();
        let pushed = store.push("u1", vec![new_note()], 2).await.unwrap();
        assert_eq!(pushed.cursor, 2);
        let PullOutcome::Page(page) = store.pull("u1", 0, 10).await.unwrap() else {
            panic!("no page");
        };
        assert_eq!(page.changes.len(), 2);
        assert_eq!(page.changes[0].note_id, note);
        assert_eq!(page.changes[0].body, "the text");
        let schema = cluster.psql(
            &url,
            "SELECT (SELECT version FROM schema_version), \
             (SELECT count(*) FROM pg_constraint WHERE conname = 'notes_user_id_fkey'), \
             (SELECT string_agg(DISTINCT collation_name, ',') FROM information_schema.columns \
              WHERE (table_name, column_name) IN (('notes', 'note_id'), ('ops', 'op_id'), \
              ('note_versions', 'note_id'), ('ops', 'user_id')))",
        );
        assert_eq!(schema.trim(), "4\t0\tC");
    }

    /// A newer version's migration changing what a statement the
    /// connections prepared returns (as migration 4 did, for instances of
    /// the version before still running) makes the next call unavailable,
    /// not a server error, and the one after it runs, prepared again.
    #[tokio::test]
    async fn a_schema_changed_under_prepared_statements_is_prepared_again() {
        if !PgCluster::available() {
            println!("skipped: PostgreSQL is not installed");
            return;
        }
        let url = PgCluster::shared().database();
        let store = PgStore::open(&url).await.unwrap();
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        store.push(&user.id, vec![new_note()], 2).await.unwrap();
        PgCluster::shared().psql(
            &url,
            "ALTER TABLE notes ALTER COLUMN note_id TYPE TEXT COLLATE \"POSIX\"",
        );
        let stale = store.push(&user.id, vec![new_note()], 3).await;
        assert!(
            matches!(&stale, Err(StoreError::Unavailable(why)) if why.contains("schema changed")),
            "{stale:?}"
        );
        let answer = store.push(&user.id, vec![new_note()], 4).await.unwrap();
        assert_eq!(answer.cursor, 2);
        let PullOutcome::Page(page) = store.pull(&user.id, 0, 10).await.unwrap() else {
            panic!("no page");
        };
        assert_eq!(page.changes.len(), 2);
    }

    /// A database that stops answering (the network to it cut: open
    /// connections black-holed, new ones never answered) makes a store
    /// call unavailable within the time limits, instead of waiting as long
    /// as the kernel keeps the socket; when the network comes back with the
    /// connections open at the cut gone for good (as after a failover), the
    /// same store serves again: the stuck connection was closed, not
    /// pooled again, and so were those idle since before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_that_stops_answering_is_given_up_then_recovered() {
        if !PgCluster::available() {
            println!("skipped: PostgreSQL is not installed");
            return;
        }
        let cluster = PgCluster::shared();
        let name = cluster.database_name();
        let link = TcpLink::start(Upstream::Unix(cluster.socket())).await;
        let store = PgStore::open(&cluster.url_via(link.addr(), &name))
            .await
            .unwrap();
        let user = store.create_user("ann", "hash", 1).await.unwrap();
        store.push(&user.id, vec![new_note()], 2).await.unwrap();
        // Three connections in the pool.
        let held = [
            store.client().await.unwrap(),
            store.client().await.unwrap(),
            store.client().await.unwrap(),
        ];
        drop(held);
        assert_eq!(store.pool.status().size, 3);

        link.cut(NewConnections::Unanswered);
        // On a pooled connection: no answer.
        let started = Instant::now();
        let down = store.latest_rev(&user.id).await;
        let took = started.elapsed();
        assert!(
            matches!(&down, Err(StoreError::Unavailable(why)) if why.contains("no answer")),
            "{down:?}"
        );
        assert!(
            took >= ANSWER_WAIT && took < ANSWER_WAIT + Duration::from_secs(3),
            "{took:?}"
        );
        // That connection was closed, and so were the two others, idle as
        // long: a new one is never answered either.
        assert_eq!(store.pool.status().size, 0);
        let started = Instant::now();
        let down = store.push(&user.id, vec![new_note()], 3).await;
        assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
        assert!(started.elapsed() < Duration::from_secs(8));

        link.lose_open_connections();
        link.heal();
        assert_eq!(store.latest_rev(&user.id).await.unwrap(), 1);
        let answer = store.push(&user.id, vec![new_note()], 4).await.unwrap();
        assert_eq!(answer.cursor, 2);
    }

    /// A transaction whose connection vanished mid-way (a push holding its
    /// user's row) does not keep its locks until PostgreSQL's keepalive
    /// notices, hours later: every connection of the store asks it to end
    /// a transaction idle for 10 s, and the user's next push goes through.
    /// One that vanished while waiting for that row gives up after 4 s
    /// rather than taking it in turn. Meanwhile a push waits 4 s for the
    /// lock and is unavailable (a 503), never a server error. Limits the
    /// operator set are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_whose_connection_vanished_releases_its_locks() {
        if !PgCluster::available() {
            println!("skipped: PostgreSQL is not installed");
            return;
        }
        let cluster = PgCluster::shared();
        let name = cluster.database_name();
        let link = TcpLink::start(Upstream::Unix(cluster.socket())).await;
        let cut_off = PgStore::open(&cluster.url_via(link.addr(), &name))
            .await
            .unwrap();
        let store = PgStore::open(&cluster.url(&name)).await.unwrap();
        let user = store.create_user("ann", "hash", 1).await.unwrap();

        let lock_row = "SELECT 1 FROM users WHERE id = $1 FOR UPDATE";
        let mut client = cut_off.client().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.execute(lock_row, &[&user.id]).await.unwrap();
        // A second transaction waits for the row, as the next push would.
        let waiter = {
            let mut client = cut_off.client().await.unwrap();
            let user_id = user.id.clone();
            tokio::spawn(async move {
                let tx = client.transaction().await.unwrap();
                let _ = tx.execute(lock_row, &[&user_id]).await;
            })
        };
        let waiting = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' \
             AND wait_event_type = 'Lock'"
        );
        let seen = latchkey_testkit::poll_until(Duration::from_secs(10), || async {
            (cluster.psql("postgres", &waiting).trim() == "1").then_some(())
        })
        .await;
        assert!(seen.is_some(), "the second transaction never waited");
        // Both connections are lost, the row locked by one and waited for
        // by the other (the rollbacks never arrive).
        link.cut(NewConnections::Refused);
        link.lose_open_connections();
        drop(tx);
        drop(client);
        link.heal();

        let failures = std::sync::Mutex::new(Vec::new());
        let pushed = latchkey_testkit::poll_until(Duration::from_secs(40), || async {
            let started = Instant::now();
            match store.push(&user.id, vec![new_note()], 2).await {
                Ok(answer) => Some(answer),
                Err(e) => {
                    failures.lock().unwrap().push((e, started.elapsed()));
                    None
                }
            }
        })
        .await;
        let (_, took) = pushed.expect("the row stays locked");
        // Ended 10 s after it went idle; the waiter gave up after 4 s
        // instead of taking the row for another 10 s in its turn.
        assert!(took < Duration::from_secs(15), "{took:?}");
        waiter.abort();
        let failures = failures.into_inner().unwrap();
        assert!(!failures.is_empty(), "the row was never locked");
        for (e, waited) in failures {
            // The lock not free within 4 s (or, after waits for two locks,
            // no answer within 5 s).
            assert!(matches!(&e, StoreError::Unavailable(_)), "{e:?}");
            assert!(waited < Duration::from_secs(6), "{waited:?}");
        }

        // A lock held by a live transaction: a push waits 4 s for it, and
        // is unavailable (the client retries), not a server error.
        let mut client = store.client().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.execute(lock_row, &[&user.id]).await.unwrap();
        let started = Instant::now();
        let busy = store.push(&user.id, vec![new_note()], 3).await;
        assert!(
            matches!(&busy, Err(StoreError::Unavailable(why)) if why.contains("55P03")),
            "{busy:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        tx.rollback().await.unwrap();
        drop(client);

        let settings = |store: PgStore| async move {
            let client = store.client().await.unwrap();
            let mut values = Vec::new();
            for name in ["idle_in_transaction_session_timeout", "lock_timeout"] {
                let row = client
                    .query_one(&format!("SHOW {name}"), &[])
                    .await
                    .unwrap();
                values.push(row.get::<_, String>(0));
            }
            values
        };
        assert_eq!(settings(store).await, ["10s", "4s"]);
        cluster.psql(
            "postgres",
            &format!(
                "ALTER DATABASE {name} SET idle_in_transaction_session_timeout = '1min'; \
                 ALTER DATABASE {name} SET lock_timeout = '2s'"
            ),
        );
        let store = PgStore::open(&cluster.url(&name)).await.unwrap();
        assert_eq!(settings(store).await, ["1min", "2s"]);
    }
}
