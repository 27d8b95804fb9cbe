//! A fault-injecting TCP proxy on 127.0.0.1, between the engine (its server
//! URL pointed at [`Proxy::url`]) and the real server.
//!
//! It parses the HTTP/1.1 traffic it carries (request and response heads,
//! `Content-Length` or chunked bodies), so faults are chosen per request,
//! also on pooled keep-alive connections: the test's policy sees each
//! request's method and path and may answer with a [`Fault`]. Every fault
//! injected is counted by kind, every request by what it is
//! ([`Proxy::requests_to`]). A response of `text/event-stream` (the
//! live-updates stream) is passed through as it comes, until either end
//! closes or the test cuts it ([`Proxy::cut_streams`]); the streams open
//! at any moment are counted ([`Proxy::streams_open`]).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub use crate::fault::{Fault, FaultKind, Rng};

/// One request as the policy sees it.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// Requests seen by this proxy before this one.
    pub seq: u64,
    pub method: String,
    /// Without the query.
    pub path: String,
    /// A token request with `grant_type=refresh_token`.
    pub refresh: bool,
}

impl RequestInfo {
    pub fn is_push(&self) -> bool {
        self.method == "POST" && self.path == "/v1/sync/push"
    }

    /// What the request is, in a word: push, pull, refresh, token,
    /// session, healthz or other.
    pub fn target(&self) -> &'static str {
        match self.path.as_str() {
            "/v1/sync/push" => "push",
            "/v1/sync/pull" => "pull",
            "/v1/auth/token" if self.refresh => "refresh",
            "/v1/auth/token" => "token",
            "/v1/auth/session" => "session",
            "/healthz" => "healthz",
            "/v1/sync/events" => "events",
            _ => "other",
        }
    }
}

/// Decides the fault (if any) of each request.
pub type Policy = Box<dyn FnMut(&RequestInfo) -> Option<Fault> + Send>;

/// No faults.
pub fn pass() -> Policy {
    Box::new(|_| None)
}

/// These faults for the next requests that `matches` accepts, in order;
/// then none.
pub fn scripted(
    faults: impl IntoIterator<Item = Fault>,
    matches: impl Fn(&RequestInfo) -> bool + Send + 'static,
) -> Policy {
    let mut left: VecDeque<Fault> = faults.into_iter().collect();
    Box::new(move |req| if matches(req) { left.pop_front() } else { None })
}

/// Relative weights of the kinds a random policy picks from.
#[derive(Debug, Clone, Copy)]
pub struct Weights {
    pub drop_before_request: u32,
    pub drop_mid_request: u32,
    pub drop_response: u32,
    pub delay: u32,
    pub reset: u32,
    pub black_hole: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            drop_before_request: 2,
            drop_mid_request: 2,
            drop_response: 3,
            delay: 2,
            reset: 2,
            black_hole: 1,
        }
    }
}

/// A fault with probability `p` per request (`p / 4` for the heartbeat's
/// `/healthz`, which would otherwise take most of them), of a kind drawn
/// by `weights`, from a generator seeded with `seed`. Pushes get a lost
/// answer three times as often as their share: the case that could
/// duplicate.
pub fn random(seed: u64, p: f64, weights: Weights) -> Policy {
    let mut rng = Rng::new(seed);
    Box::new(move |req| {
        let p = if req.target() == "healthz" {
            p / 4.0
        } else {
            p
        };
        if !rng.chance(p) {
            return None;
        }
        let w = [
            weights.drop_before_request,
            weights.drop_mid_request,
            weights.drop_response * if req.is_push() { 3 } else { 1 },
            weights.delay,
            weights.reset,
            weights.black_hole,
        ];
        let total: u32 = w.iter().sum();
        if total == 0 {
            return None;
        }
        let mut pick = rng.below(total as u64) as u32;
        let mut kind = 0;
        while pick >= w[kind] {
            pick -= w[kind];
            kind += 1;
        }
        Some(match kind {
            0 => Fault::DropBeforeRequest,
            1 => Fault::DropMidRequest(rng.unit()),
            2 => Fault::DropResponse,
            3 => Fault::Delay(Duration::from_millis(20 + rng.below(400))),
            4 => Fault::Reset {
                applied: rng.chance(0.5),
            },
            _ => Fault::BlackHole,
        })
    })
}

/// How the proxy behaves as a whole, before any policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    /// Every connection is closed at once (nothing listens).
    Refused,
    /// Every request is read and never answered.
    BlackHoled,
}

struct Shared {
    upstream: SocketAddr,
    policy: Mutex<Policy>,
    link: Mutex<Link>,
    counts: [AtomicU64; 6],
    /// Requests the server answered whose answer never reached the
    /// client, by [`RequestInfo::target`].
    answers_lost: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    requests: AtomicU64,
    /// Requests seen, by [`RequestInfo::target`].
    by_target: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Requests not forwarded because the link was down.
    link_down: AtomicU64,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Ends every event stream open now.
    cut: tokio::sync::Notify,
    /// Event streams cut so far.
    streams_cut: AtomicU64,
    /// Event streams being passed through now.
    streams_open: AtomicU64,
}

impl Shared {
    fn count(&self, f: &Fault) {
        self.counts[f.kind() as usize].fetch_add(1, Ordering::SeqCst);
    }
}

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream_port`
    /// there, with no faults until a policy is set.
    pub async fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            policy: Mutex::new(pass()),
            link: Mutex::new(Link::Up),
            counts: Default::default(),
            answers_lost: Mutex::default(),
            requests: AtomicU64::new(0),
            by_target: Mutex::default(),
            link_down: AtomicU64::new(0),
            tasks: Mutex::default(),
            cut: tokio::sync::Notify::new(),
            streams_cut: AtomicU64::new(0),
            streams_open: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let conn = tokio::spawn(serve(s.clone(), client));
                let mut tasks = s.tasks.lock().unwrap();
                tasks.retain(|t| !t.is_finished());
                tasks.push(conn.abort_handle());
            }
        });
        shared.tasks.lock().unwrap().push(accept.abort_handle());
        Proxy { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.shared.policy.lock().unwrap() = policy;
    }

    pub fn set_link(&self, link: Link) {
        *self.shared.link.lock().unwrap() = link;
    }

    /// Faults injected so far, by kind (in [`FaultKind::ALL`] order).
    pub fn counts(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.shared.counts[i].load(Ordering::SeqCst))
    }

    pub fn count(&self, kind: FaultKind) -> u64 {
        self.shared.counts[kind as usize].load(Ordering::SeqCst)
    }

    pub fn faults(&self) -> u64 {
        self.counts().iter().sum()
    }

    /// Requests handled by the server whose answer the client never got,
    /// by [`RequestInfo::target`].
    pub fn answers_lost(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.shared.answers_lost.lock().unwrap().clone()
    }

    /// Pushes applied by the server whose answer the client never got.
    pub fn push_answers_lost(&self) -> u64 {
        self.answers_lost().get("push").copied().unwrap_or(0)
    }

    /// Requests seen (forwarded or not).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests seen (forwarded or not) that were `target`, as
    /// [`RequestInfo::target`] names them (`events`, `pull`, ...).
    pub fn requests_to(&self, target: &str) -> u64 {
        self.shared
            .by_target
            .lock()
            .unwrap()
            .get(target)
            .copied()
            .unwrap_or(0)
    }

    pub fn link_down_requests(&self) -> u64 {
        self.shared.link_down.load(Ordering::SeqCst)
    }

    /// Resets every event stream open through the proxy now, as a network
    /// that drops idle connections would.
    pub fn cut_streams(&self) {
        self.shared.cut.notify_waiters();
    }

    /// Event streams cut so far.
    pub fn streams_cut(&self) -> u64 {
        self.shared.streams_cut.load(Ordering::SeqCst)
    }

    /// Event streams open through the proxy now: answered and not yet
    /// closed by either end, nor cut.
    pub fn streams_open(&self) -> u64 {
        self.shared.streams_open.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in self.shared.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// One side of a connection with the bytes read but not used yet.
struct Side {
    s: TcpStream,
    buf: Vec<u8>,
}

const MAX_HEAD: usize = 64 * 1024;

impl Side {
    fn new(s: TcpStream) -> Self {
        Self { s, buf: Vec::new() }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.s.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// The next head (through the blank line); None at a clean end.
    async fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..i + 4).collect()));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::other("head too large"));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::other("line too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// A chunked body, raw (sizes, data and trailers).
    async fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await?;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.trim().split(';').next())
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| io::Error::other("bad chunk size"))?;
            out.extend_from_slice(&line);
            if size == 0 {
                // trailers, through the blank line
                loop {
                    let t = self.line().await?;
                    out.extend_from_slice(&t);
                    if t == b"\r\n" {
                        return Ok(out);
                    }
                }
            }
            out.extend(self.exact(size + 2).await?);
        }
    }

    async fn until_closed(&mut self) -> io::Result<Vec<u8>> {
        while self.fill().await? != 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads until the peer closes (a black hole keeps it open until then).
    async fn hold(&mut self) {
        while matches!(self.fill().await, Ok(n) if n > 0) {
            self.buf.clear();
        }
    }
}

enum Body {
    None,
    Length(usize),
    Chunked,
    /// Until the connection closes.
    ToEnd,
}

struct Head {
    first: String,
    body: Body,
    close: bool,
    /// `Content-Type: text/event-stream`: passed through as it comes.
    event_stream: bool,
}

fn parse_head(raw: &[u8], request: bool) -> io::Result<Head> {
    let text = std::str::from_utf8(raw).map_err(|_| io::Error::other("head not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("").to_string();
    let (mut length, mut chunked, mut close, mut event_stream) = (None, false, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| io::Error::other("bad content-length"))?,
                )
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "content-type" => {
                event_stream = value.to_ascii_lowercase().starts_with("text/event-stream")
            }
            _ => {}
        }
    }
    let body = if chunked {
        Body::Chunked
    } else if let Some(n) = length {
        Body::Length(n)
    } else if request {
        Body::None
    } else {
        let status = first.split(' ').nth(1).unwrap_or("");
        if status.starts_with('1') || status == "204" || status == "304" {
            Body::None
        } else {
            Body::ToEnd
        }
    };
    Ok(Head {
        first,
        body,
        close,
        event_stream,
    })
}

async fn read_body(side: &mut Side, body: &Body) -> io::Result<Vec<u8>> {
    match body {
        Body::None => Ok(Vec::new()),
        Body::Length(n) => side.exact(*n).await,
        Body::Chunked => side.chunked().await,
        Body::ToEnd => side.until_closed().await,
    }
}

/// Resets the connection instead of closing it.
fn reset(side: Side) {
    let _ = side.s.set_zero_linger();
    drop(side);
}

/// Carries one client connection, request by request.
async fn serve(shared: Arc<Shared>, client: TcpStream) {
    let mut client = Side::new(client);
    if *shared.link.lock().unwrap() == Link::Refused {
        shared.link_down.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let mut upstream: Option<Side> = None;
    loop {
        let Ok(Some(head)) = client.head().await else {
            return;
        };
        let Ok(req) = parse_head(&head, true) else {
            return;
        };
        let Ok(body) = read_body(&mut client, &req.body).await else {
            return;
        };
        let mut parts = req.first.split(' ');
        let needle = b"grant_type=refresh_token";
        let refresh = body.windows(needle.len()).any(|w| w == needle);
        let info = RequestInfo {
            refresh,
            seq: shared.requests.fetch_add(1, Ordering::SeqCst),
            method: parts.next().unwrap_or("").to_string(),
            path: parts
                .next()
                .unwrap_or("")
                .split('?')
                .next()
                .unwrap_or("")
                .to_string(),
        };
        *shared
            .by_target
            .lock()
            .unwrap()
            .entry(info.target())
            .or_default() += 1;
        let link = *shared.link.lock().unwrap();
        match link {
            Link::Up => {}
            Link::Refused => {
                shared.link_down.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Link::BlackHoled => {
                shared.link_down.fetch_add(1, Ordering::SeqCst);
                client.hold().await;
                return;
            }
        }
        let fault = {
            let mut policy = shared.policy.lock().unwrap();
            (*policy)(&info)
        };
        if let Some(f) = &fault {
            shared.count(f);
        }
        match fault {
            Some(Fault::DropBeforeRequest) => return,
            Some(Fault::Reset { applied: false }) => return reset(client),
            Some(Fault::BlackHole) => return client.hold().await,
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            _ => {}
        }
        if upstream.is_none() {
            match TcpStream::connect(shared.upstream).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    upstream = Some(Side::new(s));
                }
                Err(_) => return,
            }
        }
        let up = upstream.as_mut().unwrap();
        let mut request = head;
        request.extend_from_slice(&body);
        if let Some(Fault::DropMidRequest(fraction)) = fault {
            let cut = ((request.len() as f64 * fraction) as usize).clamp(1, request.len() - 1);
            let _ = up.s.write_all(&request[..cut]).await;
            let _ = up.s.shutdown().await;
            return;
        }
        if up.s.write_all(&request).await.is_err() {
            return;
        }
        // The answer, whole (skipping any 1xx).
        let (res_head, res, res_body) = loop {
            let Ok(Some(h)) = up.head().await else {
                return;
            };
            let Ok(parsed) = parse_head(&h, false) else {
                return;
            };
            if parsed
                .first
                .split(' ')
                .nth(1)
                .is_some_and(|s| s.starts_with('1'))
            {
                if client.s.write_all(&h).await.is_err() {
                    return;
                }
                continue;
            }
            if parsed.event_stream && fault.is_none() {
                return pass_stream(&shared, h, up, client).await;
            }
            let Ok(b) = read_body(up, &parsed.body).await else {
                return;
            };
            break (h, parsed, b);
        };
        match fault {
            Some(Fault::DropResponse) | Some(Fault::Reset { applied: true }) => {
                *shared
                    .answers_lost
                    .lock()
                    .unwrap()
                    .entry(info.target())
                    .or_default() += 1;
                if matches!(fault, Some(Fault::Reset { .. })) {
                    reset(client);
                }
                return;
            }
            _ => {}
        }
        let mut answer = res_head;
        answer.extend_from_slice(&res_body);
        if client.s.write_all(&answer).await.is_err() {
            return;
        }
        if req.close || res.close || matches!(res.body, Body::ToEnd) {
            return;
        }
    }
}

/// Counts an event stream as open while it lives.
struct OpenStream<'a>(&'a AtomicU64);

impl<'a> OpenStream<'a> {
    fn new(open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Passes an event stream through as it comes, until either end closes it
/// or the test cuts it (then the client's connection is reset).
async fn pass_stream(shared: &Shared, head: Vec<u8>, up: &mut Side, mut client: Side) {
    // Made before the stream counts as open: a cut from then on reaches it.
    let cut_now = shared.cut.notified();
    let _open = OpenStream::new(&shared.streams_open);
    let mut first = head;
    first.append(&mut up.buf);
    if client.s.write_all(&first).await.is_err() {
        return;
    }
    let cut = {
        let (mut from_client, mut to_client) = client.s.split();
        let copy = async {
            let mut tmp = [0u8; 16 * 1024];
            loop {
                match up.s.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if to_client.write_all(&tmp[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        // A client that lets go of the stream closes its connection: seen
        // at once here, not at the next write (a ping, seconds later).
        let closed = async {
            let mut tmp = [0u8; 1024];
            while matches!(from_client.read(&mut tmp).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            () = copy => false,
            () = closed => false,
            () = cut_now => true,
        }
    };
    if cut {
        shared.streams_cut.fetch_add(1, Ordering::SeqCst);
        reset(client);
    }
}
