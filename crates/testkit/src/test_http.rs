//! [`TestHttp`]: the engine's real transport with a hand on every request:
//! it counts them by path, and fails, delays or loses the ones a test says.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use latchkey_client::http::{HttpRequest, HttpResponse, HttpStream};
use latchkey_client::{Error, Http, ReqwestHttp};

use crate::fault::Fault;

/// A transport that counts requests by path and can fail them on purpose.
/// Clones share everything.
#[derive(Clone)]
pub struct TestHttp {
    inner: ReqwestHttp,
    /// Every request's path (`v1/sync/push`), or `refresh` for a refresh
    /// grant, in order.
    pub calls: Arc<Mutex<Vec<String>>>,
    /// Drop the response of the next N refresh grants (the server has
    /// applied them; the client never hears back).
    pub lose_refresh_responses: Arc<AtomicUsize>,
    /// Drop the response of the next N pushes (applied, never answered).
    pub lose_push_responses: Arc<AtomicUsize>,
    /// Make every request fail as if the network were gone.
    pub down: Arc<AtomicBool>,
    /// A script for the next requests, one step each, in order: `None`
    /// lets the request through, `Some` is what happens to it (an empty
    /// script lets everything through).
    pub plan: Arc<Mutex<VecDeque<Option<Fault>>>>,
    /// How many faults of `plan` have happened.
    pub faults_injected: Arc<AtomicUsize>,
    /// Requests to these paths (e.g. `healthz`) fail as if the network were
    /// gone; they take no step of `plan`.
    pub unreachable: Arc<Mutex<Vec<String>>>,
    /// The next request to each of these paths fails as if the network
    /// were gone (once per entry).
    pub fail_once: Arc<Mutex<Vec<String>>>,
    /// Pushes over this many bytes are refused with 413, as by a proxy
    /// with a lower limit than the server's (0: no limit).
    pub push_limit: Arc<AtomicUsize>,
}

impl Default for TestHttp {
    fn default() -> Self {
        Self::new()
    }
}

fn network(detail: &str) -> Error {
    Error::Network {
        detail: detail.into(),
    }
}

/// Takes one from `counter` if it is above zero.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TestHttp {
    /// The real transport (2 s to connect), nothing planned.
    pub fn new() -> Self {
        Self {
            inner: ReqwestHttp::new(Duration::from_secs(2)).expect("a reqwest client"),
            calls: Arc::default(),
            lose_refresh_responses: Arc::default(),
            lose_push_responses: Arc::default(),
            down: Arc::default(),
            plan: Arc::default(),
            faults_injected: Arc::default(),
            unreachable: Arc::default(),
            fail_once: Arc::default(),
            push_limit: Arc::default(),
        }
    }

    /// How many requests were `what` (a path such as `v1/sync/push`, or
    /// `refresh`).
    pub fn count(&self, what: &str) -> usize {
        lock(&self.calls)
            .iter()
            .filter(|c| c.as_str() == what)
            .count()
    }
}

/// The path of `url` without its leading slash and query: `v1/sync/push`.
pub fn path_of(url: &str) -> &str {
    let path = url.splitn(4, '/').nth(3).unwrap_or("");
    path.split('?').next().unwrap_or("")
}

#[async_trait]
impl Http for TestHttp {
    fn has_streams(&self) -> bool {
        true
    }

    /// The live-updates stream: counted, and refused while the network is
    /// `down` or its path unreachable; `plan` and the lost answers are for
    /// ordinary requests only.
    async fn stream(&self, req: HttpRequest) -> latchkey_client::Result<HttpStream> {
        let path = path_of(&req.url).to_string();
        let unreachable = lock(&self.unreachable).contains(&path);
        lock(&self.calls).push(path);
        if self.down.load(Ordering::SeqCst) || unreachable {
            return Err(network("test network down"));
        }
        self.inner.stream(req).await
    }

    async fn send(&self, req: HttpRequest) -> latchkey_client::Result<HttpResponse> {
        if self.down.load(Ordering::SeqCst) {
            return Err(network("test network down"));
        }
        let path = path_of(&req.url).to_string();
        let refresh = path == "v1/auth/token"
            && String::from_utf8_lossy(&req.body).contains("grant_type=refresh_token");
        let push = path == "v1/sync/push";
        let unreachable = lock(&self.unreachable).contains(&path);
        let once = {
            let mut once = lock(&self.fail_once);
            once.iter()
                .position(|p| *p == path)
                .map(|i| once.remove(i))
                .is_some()
        };
        lock(&self.calls).push(if refresh { "refresh".into() } else { path });
        if unreachable || once {
            return Err(network("test made this path unreachable"));
        }
        let limit = self.push_limit.load(Ordering::SeqCst);
        if push && limit > 0 && req.body.len() > limit {
            return Ok(HttpResponse {
                status: 413,
                body: br#"{"error":"request_too_large","error_description":"over the test proxy's limit"}"#.to_vec(),
                date: None,
                retry_after: None,
            });
        }
        let step = lock(&self.plan).pop_front().flatten();
        if step.is_some() {
            self.faults_injected.fetch_add(1, Ordering::SeqCst);
        }
        let lose_answer = match step {
            None => false,
            Some(
                Fault::DropBeforeRequest
                | Fault::DropMidRequest(_)
                | Fault::Reset { applied: false },
            ) => return Err(network("test failed the request")),
            Some(Fault::BlackHole) => {
                tokio::time::sleep(req.timeout).await;
                return Err(network("the request timed out"));
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                false
            }
            Some(Fault::DropResponse | Fault::Reset { applied: true }) => true,
        };
        let res = self.inner.send(req).await?;
        if lose_answer
            || (push && take_one(&self.lose_push_responses))
            || (refresh && take_one(&self.lose_refresh_responses))
        {
            return Err(network("test lost the response"));
        }
        Ok(res)
    }
}
