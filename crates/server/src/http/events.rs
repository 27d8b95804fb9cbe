//! `GET /v1/sync/events`: the live-updates stream (Server-Sent Events,
//! PROTOCOL.md v1.1 "Live updates"). `event: changed` with the user's
//! latest rev on connect and whenever it grows; `event: revoked` and the end
//! when the session is revoked; the end, without an event, at the access
//! token's `exp` or when the server shuts down; `: ping` after
//! [`Settings::events_ping`](crate::state::Settings::events_ping) of
//! silence. Each stream waits on its channels in [`crate::live`] and a
//! timer, never polls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use latchkey_protocol::sync::{EVENT_CHANGED, EVENT_REVOKED, EVENTS_PATH};
use latchkey_protocol::{ChangedEvent, Reason, RevokedEvent};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Authed;
use crate::error::AppResult;
use crate::live::Watch;
use crate::state::AppState;

/// The comment of the keep-alive: `: ping` on the wire.
pub const PING: &str = "ping";

pub fn router() -> Router<AppState> {
    Router::new().route(EVENTS_PATH, get(events))
}

async fn events(State(state): State<AppState>, authed: Authed) -> AppResult<impl IntoResponse> {
    let user_id = &authed.session.user_id;
    // Subscribed before the rev is read: a push committing in between
    // raises the watch too, and the watch never goes down.
    let revs = state.live.watch_user(user_id);
    let latest = state.store.latest_rev(user_id).await?;
    state.live.rev_advanced(user_id, latest);
    let feed = Feed {
        revoked: state.sessions.watch(&authed.session.id),
        revs,
        closing: state.live.closing(),
        expires: instant_of(authed.claims.exp),
        rev_unsent: true,
        ended: false,
    };
    let keep_alive = KeepAlive::new()
        .interval(state.settings.events_ping)
        .text(PING);
    Ok((
        // A buffering proxy (nginx) would hold events back past the second
        // the protocol promises.
        [("x-accel-buffering", "no")],
        Sse::new(feed.into_stream()).keep_alive(keep_alive),
    ))
}

/// The tokio instant of the Unix time `exp` (now, if it is past).
fn instant_of(exp: i64) -> Instant {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0));
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

/// One stream's state: what it waits on.
struct Feed {
    revs: Watch<i64>,
    revoked: Watch<Option<Reason>>,
    closing: watch::Receiver<bool>,
    /// The access token's `exp`.
    expires: Instant,
    /// Whether the latest rev is still to be sent (true on connect).
    rev_unsent: bool,
    /// Whether `revoked` was sent: the stream is over.
    ended: bool,
}

/// What a stream says next.
#[derive(Debug, PartialEq, Eq)]
enum Say {
    Changed(i64),
    Revoked(Reason),
}

impl Feed {
    /// Waits for what to say next; None ends the stream. A wake-up only
    /// notes what happened: the top of the loop decides, so a revocation
    /// always wins over a rev that changed at the same moment.
    async fn next(&mut self) -> Option<Say> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(reason) = *self.revoked.borrow_and_update() {
                self.ended = true;
                return Some(Say::Revoked(reason));
            }
            if *self.closing.borrow_and_update() {
                return None;
            }
            if std::mem::take(&mut self.rev_unsent) {
                return Some(Say::Changed(*self.revs.borrow_and_update()));
            }
            tokio::select! {
                biased;
                r = self.revoked.changed() => r.ok()?,
                r = self.closing.changed() => r.ok()?,
                _ = tokio::time::sleep_until(self.expires) => return None,
                r = self.revs.changed() => {
                    r.ok()?;
                    self.rev_unsent = true;
                }
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Event, axum::Error>> + Send + 'static {
        stream::unfold(self, |mut feed| async move {
            let event = match feed.next().await? {
                Say::Changed(cursor) => Event::default()
                    .event(EVENT_CHANGED)
                    .json_data(ChangedEvent { cursor }),
                Say::Revoked(reason) => Event::default()
                    .event(EVENT_REVOKED)
                    .json_data(RevokedEvent { reason }),
            };
            Some((event, feed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Live;
    use http_body_util::BodyExt as _;

    fn feed(live: &Live, expires_in: Duration) -> Feed {
        Feed {
            revs: live.watch_user("u"),
            revoked: live.watch_session("s"),
            closing: live.closing(),
            expires: Instant::now() + expires_in,
            rev_unsent: true,
            ended: false,
        }
    }

    /// What a stream writes, as text, until it ends or `within` passes.
    async fn wire(
        s: impl Stream<Item = Result<Event, axum::Error>> + Send + 'static,
        keep_alive: Option<KeepAlive>,
        within: Duration,
    ) -> String {
        let res = match keep_alive {
            Some(k) => Sse::new(s).keep_alive(k).into_response(),
            None => Sse::new(s).into_response(),
        };
        let mut body = res.into_body();
        let mut out = String::new();
        let _ = tokio::time::timeout(within, async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    out.push_str(std::str::from_utf8(d).unwrap());
                }
            }
        })
        .await;
        out
    }

    #[tokio::test]
    async fn the_wire_text_of_every_event_and_of_the_ping() {
        let live = Live::default();
        let f = feed(&live, Duration::from_millis(1000));
        live.rev_advanced("u", 12);
        let ping = KeepAlive::new()
            .interval(Duration::from_millis(200))
            .text(PING);
        // Pings while silent; then the token's exp ends the stream
        // without an event.
        let text = wire(f.into_stream(), Some(ping), Duration::from_secs(30)).await;
        let pings = text
            .strip_prefix("event: changed\ndata: {\"cursor\":12}\n\n")
            .unwrap_or_else(|| panic!("{text:?}"));
        assert!(!pings.is_empty(), "{text:?}");
        assert_eq!(pings.replace(": ping\n\n", ""), "", "{text:?}");
    }

    #[tokio::test]
    async fn a_revocation_is_the_last_word() {
        let live = Live::default();
        let f = feed(&live, Duration::from_secs(600));
        let stream = f.into_stream();
        let sent = tokio::spawn(wire(stream, None, Duration::from_secs(10)));
        tokio::task::yield_now().await;
        live.rev_advanced("u", 3);
        live.session_revoked("s", Reason::Revoked);
        live.rev_advanced("u", 4);
        let text = sent.await.unwrap();
        assert!(
            text.ends_with("event: revoked\ndata: {\"reason\":\"revoked\"}\n\n"),
            "{text:?}"
        );
        // A rev that moved at the same moment is not sent after, nor before.
        assert!(!text.contains("\"cursor\":3"), "{text:?}");
        assert!(!text.contains("\"cursor\":4"), "{text:?}");
    }

    #[tokio::test]
    async fn changes_are_coalesced_to_the_latest_and_closing_ends_every_stream() {
        let live = Live::default();
        let mut f = feed(&live, Duration::from_secs(600));
        assert_eq!(f.next().await, Some(Say::Changed(0)), "on connect");
        for rev in 1..=5 {
            live.rev_advanced("u", rev);
        }
        assert_eq!(f.next().await, Some(Say::Changed(5)));
        live.close();
        assert_eq!(f.next().await, None);
        let mut late = feed(&live, Duration::from_secs(600));
        assert_eq!(late.next().await, None, "opened while shutting down");
        drop((f, late));
        assert_eq!(live.watched(), (0, 0));
    }
}
