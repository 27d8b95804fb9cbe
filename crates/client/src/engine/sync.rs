//! Sync: confirm the session, push the outbox, pull, one sync at a time.
//! The push is pipelined (the next batch prepared and earlier answers
//! applied while a batch is on the wire), the pull applies a page while
//! the next is fetched, and a server restored from an older backup is
//! given back what it lost. Every call goes through the session's
//! authenticated calls, on the active account's local store.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use latchkey_protocol::{Op, PullResponse, PushRequest, PushResponse};
use uuid::Uuid;

use super::blocking::{blocking, lock};
use super::report::Reporter;
use super::revocations::Revocations;
use super::session::{Active, Session};
use crate::api::{self, Timeouts};
use crate::error::{Error, Result};
use crate::http::Http;
use crate::status::StatusError;
use crate::store::SYNC_OK;

/// At most this many ops per push.
pub const PUSH_BATCH: usize = 500;
/// The server's largest page: fewer round trips for a large pull.
const PULL_PAGE: u32 = 1000;

/// Runs syncs, one at a time, for the active account.
pub(crate) struct Syncer {
    session: Arc<Session>,
    revocations: Arc<Revocations>,
    reporter: Arc<Reporter>,
    http: Arc<dyn Http>,
    timeouts: Timeouts,
    /// One sync at a time.
    running: tokio::sync::Mutex<()>,
}

impl Syncer {
    pub(crate) fn new(
        session: Arc<Session>,
        revocations: Arc<Revocations>,
        reporter: Arc<Reporter>,
        http: Arc<dyn Http>,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            session,
            revocations,
            reporter,
            http,
            timeouts,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Single-flight sync: confirm the session, push the outbox, pull.
    pub(crate) async fn run(&self) -> Result<()> {
        self.run_steps(true, None).await
    }

    /// A sync without the session check, on news from the live-updates
    /// stream (whose being open is that check): push the outbox, pull.
    /// With `upto`, only if this device has not pulled that far by the
    /// time it is its turn.
    pub(crate) async fn catch_up(&self, upto: Option<i64>) -> Result<()> {
        self.run_steps(false, upto).await
    }

    async fn run_steps(&self, confirm: bool, upto: Option<i64>) -> Result<()> {
        self.reporter.ensure_network()?;
        let _guard = self.running.lock().await;
        let of = self.session.active();
        // Most news is the echo of this device's own push, which comes while
        // that sync runs and is then pulled by it: pulling again would
        // double the pulls of every edit.
        if let (Some(cursor), Ok(of)) = (upto, &of)
            && pulled(of, cursor).await
        {
            return Ok(());
        }
        let result = match &of {
            Ok(of) => self.steps(of, confirm).await,
            Err(e) => Err(e.clone()),
        };
        if matches!(result, Err(Error::Switched)) {
            // Its account is not the one shown now; it syncs when active.
            return result;
        }
        if let Ok(of) = of {
            let outcome = match &result {
                Ok(()) => SYNC_OK.to_string(),
                Err(e) => e.to_string(),
            };
            let now = self.session.now();
            let _ = blocking(move || lock(&of.store).set_last_sync(now, &outcome)).await;
        }
        self.reporter
            .set_error(result.as_ref().err().map(StatusError::from));
        self.session.publish();
        result
    }

    /// Nothing to pull up to `cursor`: this device's cursor is there or
    /// past it, or no session is left to pull for.
    pub(crate) async fn pulled_to(&self, cursor: i64) -> bool {
        match self.session.active() {
            Ok(of) => pulled(&of, cursor).await,
            Err(_) => true,
        }
    }

    async fn steps(&self, of: &Active, confirm: bool) -> Result<()> {
        if confirm {
            self.revocations.retry().await;
            self.session.confirm(of).await?;
        }
        let pass = Pass {
            syncer: self,
            of,
            too_large: Mutex::default(),
        };
        pass.run().await
    }

    /// A sync changed `n` notes: tell the UI (an apply that changed none
    /// still moves the pending count).
    fn notes_changed(&self, n: usize) {
        self.reporter.notes_changed(n);
        self.session.publish();
    }
}

/// `of`'s cursor is at `cursor` or past it.
async fn pulled(of: &Active, cursor: i64) -> bool {
    let store = of.store.clone();
    blocking(move || lock(&store).cursor())
        .await
        .is_ok_and(|mine| mine >= cursor)
}

/// Push answers being applied, one after another, behind the pushes.
type Applying<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

fn nothing_to_apply<'a>() -> Applying<'a> {
    Box::pin(std::future::ready(Ok(())))
}

/// The answers received and not yet applied, as one future (never one that
/// has finished: that is replaced by `nothing_to_apply`).
struct Behind<'a> {
    applying: Applying<'a>,
    /// `applying` holds nothing to apply.
    applied: bool,
}

impl<'a> Behind<'a> {
    fn new() -> Self {
        Self {
            applying: nothing_to_apply(),
            applied: true,
        }
    }

    /// Queues `apply` behind the answers before it.
    fn queue(&mut self, apply: impl Future<Output = Result<()>> + Send + 'a) {
        let before = std::mem::replace(&mut self.applying, nothing_to_apply());
        self.applying = Box::pin(async move {
            before.await?;
            apply.await
        });
        self.applied = false;
    }

    /// Everything queued, as one future; nothing stays queued.
    fn take(&mut self) -> Applying<'a> {
        self.applied = true;
        std::mem::replace(&mut self.applying, nothing_to_apply())
    }

    /// Runs `work` while what is queued is applied; an apply that fails
    /// stops both.
    async fn alongside<T>(&mut self, work: impl Future<Output = T>) -> Result<T> {
        let mut work = std::pin::pin!(work);
        loop {
            // Biased: the next batch is taken before an answer is
            // applied, so that it is ready when this push returns.
            tokio::select! {
                biased;
                r = &mut work => return Ok(r),
                r = &mut self.applying, if !self.applied => {
                    self.applied = true;
                    self.applying = nothing_to_apply();
                    r?;
                }
            }
        }
    }
}

/// One sync's calls, over the session's authenticated requests.
struct Pass<'a> {
    syncer: &'a Syncer,
    /// The account the sync is for, its server and its notes.
    of: &'a Active,
    /// Ops refused as too large even alone (a proxy's lower limit): they
    /// stay queued, the rest of the sync goes on, and the sync says so.
    too_large: Mutex<Vec<Uuid>>,
}

impl Pass<'_> {
    async fn run(&self) -> Result<()> {
        let (since, first_page) = self.push_outbox().await?;
        match self.pull_all(since, first_page).await {
            // The server was restored from an older backup: compare
            // everything with it, queue again what it lost, and push that.
            Err(Error::CursorAhead) => {
                self.resync().await?;
                let (since, first_page) = self.push_outbox().await?;
                self.pull_all(since, first_page).await?;
            }
            other => other?,
        }
        let refused = std::mem::take(&mut *lock(&self.too_large));
        if refused.is_empty() {
            return Ok(());
        }
        // Unsent again, so that an edit of the note can replace them.
        let s = self.of.store.clone();
        blocking(move || refused.into_iter().try_for_each(|op| lock(&s).unsend(op))).await?;
        Err(Error::TooLarge)
    }

    /// Pushes `ops`; a batch refused as too large is split in two and each
    /// half pushed in turn, so that one big note never blocks the others.
    fn push(
        &self,
        ops: Vec<Op>,
    ) -> Pin<Box<dyn Future<Output = Result<PushResponse>> + Send + '_>> {
        Box::pin(async move {
            let body = Arc::new(PushRequest { ops });
            let (http, server, t) = (&self.syncer.http, &self.of.server, self.syncer.timeouts);
            let answer = self
                .syncer
                .session
                .authed(self.of, |token| {
                    let (http, server, body) = (http.clone(), server.clone(), body.clone());
                    async move { api::push(http.as_ref(), &server, &token, &body, t).await }
                })
                .await;
            let mut ops = match answer {
                Err(Error::TooLarge) => Arc::unwrap_or_clone(body).ops,
                answer => return answer,
            };
            if ops.len() == 1 {
                tracing::warn!("the server refused a note as too large; it stays queued");
                lock(&self.too_large).push(ops[0].op_id());
                return Ok(PushResponse {
                    results: Vec::new(),
                    cursor: 0,
                });
            }
            let second = ops.split_off(ops.len() / 2);
            let mut first = self.push(ops).await?;
            let second = self.push(second).await?;
            first.results.extend(second.results);
            first.cursor = first.cursor.max(second.cursor);
            Ok(first)
        })
    }

    async fn pull(&self, since: i64) -> Result<PullResponse> {
        let (http, server, t) = (&self.syncer.http, &self.of.server, self.syncer.timeouts);
        self.syncer
            .session
            .authed(self.of, |token| {
                let (http, server) = (http.clone(), server.clone());
                async move { api::pull(http.as_ref(), &server, &token, since, PULL_PAGE, t).await }
            })
            .await
    }

    async fn apply(&self, answer: PushResponse) -> Result<()> {
        let s = self.of.store.clone();
        let changed = blocking(move || lock(&s).apply_push(&answer.results)).await?;
        self.syncer.notes_changed(changed);
        Ok(())
    }

    /// The outbox's next batch, with the cursor the pull starts from.
    async fn look(&self) -> Result<(Vec<Op>, i64)> {
        let s = self.of.store.clone();
        blocking(move || {
            let mut store = lock(&s);
            Ok((store.next_batch(PUSH_BATCH)?, store.cursor()?))
        })
        .await
    }

    /// Pushes the whole outbox, pipelined: while one batch is on the wire
    /// the next is prepared (unsent ops only: the batch in flight is
    /// already marked sent) and answers are applied, in order, behind the
    /// pushes: a batch goes as soon as the answer before it is in and it is
    /// ready, whether or not that answer is applied yet. Ops marked sent
    /// whose answer never comes are sent again, first, by the next sync.
    ///
    /// Returns where the pull starts, and its first page if it was fetched
    /// while the last answer was applied.
    async fn push_outbox(&self) -> Result<(i64, Option<Result<PullResponse>>)> {
        let (mut ops, mut since) = self.look().await?;
        let mut behind = Behind::new();
        // Every op this sync pushed, so none is sent twice by it.
        let mut pushed = HashSet::new();
        // The first pull page, fetched while the last push answer is applied.
        let mut first_page = None;
        while !ops.is_empty() {
            pushed.extend(ops.iter().map(Op::op_id));
            let answer;
            (answer, ops) = self.push_batch(ops, &mut behind).await?;
            behind.queue(self.apply(answer));
            // The last answer can give edits queued behind its ops their
            // base: apply it and look again, so that a sync leaves nothing
            // it could have sent. Nothing is in flight now, so ops still
            // marked sent and not pushed by this sync are ones whose answer
            // was lost before it (a lost answer leaves two pipelined
            // batches marked sent, and the first look took one): resend them.
            // Meanwhile the pull starts: its page is applied only after the
            // answers, and dropped if there is more to push or an answer
            // moved the cursor back (a conflict whose server note was left
            // out of the answer: the pull brings it).
            if ops.is_empty() {
                let settled = behind.take();
                let settle = async {
                    settled.await?;
                    self.look().await
                };
                let (next, page) = tokio::join!(settle, self.pull(since));
                let cursor;
                (ops, cursor) = next?;
                ops.retain(|op| !pushed.contains(&op.op_id()));
                first_page = (ops.is_empty() && cursor == since).then_some(page);
                since = cursor;
            }
        }
        Ok((since, first_page))
    }

    /// Pushes `ops` while the next batch is prepared and the answers before
    /// are applied; returns the answer and the next batch.
    async fn push_batch(
        &self,
        ops: Vec<Op>,
        behind: &mut Behind<'_>,
    ) -> Result<(PushResponse, Vec<Op>)> {
        let s = self.of.store.clone();
        let prepare = blocking(move || lock(&s).next_unsent_batch(PUSH_BATCH));
        let (answer, next) = behind
            .alongside(async { tokio::join!(self.push(ops), prepare) })
            .await?;
        match answer.and_then(|a| next.map(|n| (a, n))) {
            Ok(pushed) => Ok(pushed),
            Err(e) => {
                // What was answered is applied before the sync ends.
                behind.take().await?;
                Err(e)
            }
        }
    }

    /// Pulls until `more` is false, a page applied while the next is fetched.
    async fn pull_all(
        &self,
        mut since: i64,
        first_page: Option<Result<PullResponse>>,
    ) -> Result<()> {
        let mut page = match first_page {
            Some(page) => page?,
            None => self.pull(since).await?,
        };
        loop {
            let more = page.more && page.cursor > since;
            since = page.cursor;
            let s = self.of.store.clone();
            let apply = async {
                let changed = blocking(move || lock(&s).apply_pull(&page)).await?;
                self.syncer.notes_changed(changed);
                Ok(())
            };
            if !more {
                return apply.await;
            }
            let (applied, next) = tokio::join!(apply, self.pull(since));
            applied?;
            page = next?;
        }
    }

    /// Compares every note with a server that lost changes (PROTOCOL.md
    /// v1.1: a cursor ahead of the server), and queues again what it lacks
    /// or holds at an older text; the push that follows gives it back.
    async fn resync(&self) -> Result<()> {
        tracing::warn!(
            "the server is behind this device (restored from a backup?); resyncing from 0"
        );
        let s = self.of.store.clone();
        blocking(move || lock(&s).begin_resync()).await?;
        let mut since = 0;
        loop {
            let page = self.pull(since).await?;
            let more = page.more && page.cursor > since;
            since = page.cursor;
            let (s, now) = (self.of.store.clone(), self.syncer.session.now());
            blocking(move || lock(&s).apply_resync_page(&page, now)).await?;
            if !more {
                break;
            }
        }
        let (s, now) = (self.of.store.clone(), self.syncer.session.now());
        blocking(move || lock(&s).finish_resync(since, now)).await?;
        self.syncer.notes_changed(1);
        Ok(())
    }
}
