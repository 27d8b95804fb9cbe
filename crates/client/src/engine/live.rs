//! Live updates (PROTOCOL.md v1.1): while online, one open
//! `GET /v1/sync/events` stream.
//!
//! * `changed` past this device's cursor starts a catch-up (push and pull,
//!   no session check: the open stream is the check), unless a sync has
//!   pulled that far by its turn (most often, the news of this device's own
//!   push);
//! * `revoked` ends the session at once (notes and outbox kept, as for any
//!   revocation);
//! * a stream that ends or breaks is opened again with backoff.
//!
//! The connectivity loop says when a stream is wanted; "Work offline" and
//! going offline close it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use latchkey_protocol::sync::{EVENT_CHANGED, EVENT_REVOKED, EVENTS_PING_SECS};
use latchkey_protocol::{ChangedEvent, RevokedEvent};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::blocking::lock;
use super::session::{Active, Session};
use super::sync::Syncer;
use crate::api::{self, Timeouts};
use crate::error::{Error, Result};
use crate::http::{Http, HttpStream};
use crate::policy;
use crate::sse::Parser;

/// A stream silent for this long (three pings missed) is taken as dead.
const SILENT_FOR: Duration = Duration::from_secs(3 * EVENTS_PING_SECS);
/// A stream that lasted less than this did not really work: the next one
/// waits for the backoff.
const SHORT_LIVED: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The stream, kept open while wanted.
pub(crate) struct Live {
    session: Arc<Session>,
    syncer: Arc<Syncer>,
    http: Arc<dyn Http>,
    timeouts: Timeouts,
    task: Mutex<Option<Tasks>>,
}

/// What the reader tells the puller.
#[derive(Default)]
struct News {
    pull: Notify,
    /// The latest cursor a `changed` announced.
    cursor: AtomicI64,
    /// A stream opened: catch up whatever the cursor.
    opened: AtomicBool,
}

/// The stream's reader and its catch-up puller; both end when dropped.
struct Tasks {
    reader: JoinHandle<()>,
    puller: JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.reader.abort();
        self.puller.abort();
    }
}

impl Live {
    pub(crate) fn new(
        session: Arc<Session>,
        syncer: Arc<Syncer>,
        http: Arc<dyn Http>,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            session,
            syncer,
            http,
            timeouts,
            task: Mutex::new(None),
        }
    }

    /// Opens the stream if `wanted` (and the transport has streams) and
    /// none is open; closes it if not.
    pub(crate) fn want(self: &Arc<Self>, wanted: bool) {
        let wanted = wanted && self.http.has_streams();
        let mut task = lock(&self.task);
        let running = task.as_ref().is_some_and(|t| !t.reader.is_finished());
        if wanted && !running {
            let news = Arc::new(News::default());
            *task = Some(Tasks {
                reader: tokio::spawn(read_loop(Arc::downgrade(self), news.clone())),
                puller: tokio::spawn(pull_loop(Arc::downgrade(&self.syncer), news)),
            });
        } else if !wanted {
            *task = None;
        }
    }

    async fn open(&self, of: &Active) -> Result<HttpStream> {
        let (http, t) = (self.http.clone(), self.timeouts);
        self.session
            .authed(of, |token| {
                let (http, server) = (http.clone(), of.server.clone());
                async move { api::events(http.as_ref(), &server, &token, t).await }
            })
            .await
    }

    /// Reads one open stream to its end. `Ok` when the server ended it (at
    /// the token's expiry) or the session is over; `Err` when it broke.
    async fn read(&self, of: &Active, mut stream: HttpStream, news: &News) -> Result<()> {
        let mut parser = Parser::new();
        loop {
            let chunk = tokio::time::timeout(SILENT_FOR, stream.body.next())
                .await
                .map_err(|_| Error::Network {
                    detail: "the live-updates stream went silent".into(),
                })??;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            let events = parser
                .feed(&chunk)
                .map_err(|e| Error::Server(e.to_string()))?;
            for event in events {
                match event.name.as_str() {
                    EVENT_CHANGED => {
                        let Ok(changed) = serde_json::from_str::<ChangedEvent>(&event.data) else {
                            continue;
                        };
                        news.cursor.fetch_max(changed.cursor, Ordering::SeqCst);
                        if !self.syncer.pulled_to(changed.cursor).await {
                            news.pull.notify_one();
                        }
                    }
                    EVENT_REVOKED => {
                        let reason = serde_json::from_str::<RevokedEvent>(&event.data)
                            .map(|r| r.reason)
                            .unwrap_or(latchkey_protocol::Reason::Revoked);
                        tracing::info!(reason = reason.as_str(), "the server ended the session");
                        self.session.ended_by_server(of, reason).await;
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Opens the stream, reads it, opens it again, until aborted or the
/// session ends; each stream is for the account active when it opens.
async fn read_loop(live: Weak<Live>, news: Arc<News>) {
    let mut attempt = 0u32;
    loop {
        let Some(link) = live.upgrade() else { return };
        let Ok(of) = link.session.active() else {
            return;
        };
        let opened = Instant::now();
        let outcome = match link.open(&of).await {
            Ok(stream) => {
                // Whatever happened while no stream was open.
                news.opened.store(true, Ordering::SeqCst);
                news.pull.notify_one();
                link.read(&of, stream, &news).await
            }
            // The session ended, or the network is gone (the engine is then
            // offline and the loop closes this): nothing to retry here.
            Err(e) if e.ends_session() => return,
            Err(e) => Err(e),
        };
        if !link.session.has_session() {
            return;
        }
        drop(link);
        if let Err(e) = &outcome {
            tracing::info!(error = %e, "the live-updates stream broke");
        }
        if outcome.is_ok() && opened.elapsed() >= SHORT_LIVED {
            attempt = 0;
            continue;
        }
        tokio::time::sleep(policy::backoff(attempt, BACKOFF_MIN, BACKOFF_MAX)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Catches up whenever told, one catch-up at a time: news that comes
/// during one makes exactly one more. After an opening, whatever the
/// cursor; else only if no sync has pulled the announced cursor by then.
async fn pull_loop(syncer: Weak<Syncer>, news: Arc<News>) {
    loop {
        news.pull.notified().await;
        let Some(syncer) = syncer.upgrade() else {
            return;
        };
        let upto = (!news.opened.swap(false, Ordering::SeqCst))
            .then(|| news.cursor.load(Ordering::SeqCst));
        if let Err(e) = syncer.catch_up(upto).await {
            tracing::info!(error = %e, "catching up after a live update failed");
        }
    }
}
