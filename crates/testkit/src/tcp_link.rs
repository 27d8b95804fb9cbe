//! A plain TCP forwarder on 127.0.0.1 whose link can be cut, as the network
//! between server instances and their database can be ([`TcpLink`]): during a
//! cut, open connections carry no byte either way and neither end is told
//! (a black hole), and new connections are refused (nothing listens on
//! the port) or accepted and never answered. When the link heals, the
//! bytes held meanwhile are delivered, as TCP's retransmissions deliver
//! them after a short outage; or, for the connections given up with
//! [`TcpLink::lose_open_connections`], never (as after a failover).
//!
//! Unlike [`crate::proxy`] it knows nothing of HTTP: it carries any
//! protocol (PostgreSQL's here), to a TCP address or a Unix socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// Where a [`TcpLink`] forwards to.
#[derive(Debug, Clone)]
pub enum Upstream {
    Tcp(SocketAddr),
    /// A Unix socket (a private PostgreSQL cluster's:
    /// [`crate::PgCluster::socket`]).
    Unix(PathBuf),
}

/// What a cut does to connections made while it lasts (open ones always
/// hold their bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewConnections {
    /// Refused: nothing listens on the port until the link heals.
    Refused,
    /// Accepted, then never answered until the link heals.
    Unanswered,
}

/// The state of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    /// None: up.
    cut: Option<NewConnections>,
    /// Connections numbered below this never carry a byte again.
    lost_below: u64,
}

impl State {
    /// Whether connection `n` may carry bytes now.
    fn flows(&self, n: u64) -> bool {
        self.cut.is_none() && n >= self.lost_below
    }
}

/// A running forwarder; stops (closing every connection) when dropped.
pub struct TcpLink {
    addr: SocketAddr,
    state: watch::Sender<State>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    /// Connections accepted so far (each numbered by the count before it).
    accepted: Arc<AtomicU64>,
}

impl TcpLink {
    /// Listens on a free port of 127.0.0.1 and forwards every connection
    /// to `upstream`. Must be called inside a Tokio runtime.
    ///
    /// # Panics
    /// If no port can be bound.
    pub async fn start(upstream: Upstream) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port on 127.0.0.1");
        let addr = listener.local_addr().expect("a bound address");
        let (state, _) = watch::channel(State {
            cut: None,
            lost_below: 0,
        });
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            state.subscribe(),
            tasks.clone(),
            accepted.clone(),
        ));
        tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(accept.abort_handle());
        Self {
            addr,
            state,
            tasks,
            accepted,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Cuts the link: open connections stop carrying bytes (neither end is
    /// told), and `new` ones are refused or never answered.
    pub fn cut(&self, new: NewConnections) {
        self.state.send_modify(|s| s.cut = Some(new));
    }

    /// Heals the link: held bytes are delivered, new connections
    /// forwarded again.
    pub fn heal(&self) {
        self.state.send_modify(|s| s.cut = None);
    }

    /// The connections open now never carry a byte again, and neither end
    /// is told: as the instances see a partition long enough for TCP to
    /// give up, or a failover to another host. (Each end learns only by
    /// its own time limits.) Connections made later are not affected.
    pub fn lose_open_connections(&self) {
        let below = self.accepted.load(Ordering::SeqCst);
        self.state.send_modify(|s| s.lost_below = below);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    upstream: Upstream,
    mut state: watch::Receiver<State>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    accepted: Arc<AtomicU64>,
) {
    let addr = listener.local_addr().expect("a bound address");
    let refusing = |s: &State| s.cut == Some(NewConnections::Refused);
    loop {
        if refusing(&state.borrow_and_update()) {
            // Nothing listens: a connect is refused at once.
            drop(listener);
            let _ = state.wait_for(|s| !refusing(s)).await;
            listener = rebind(addr).await;
            continue;
        }
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
            _ = state.changed() => continue,
        };
        let n = accepted.fetch_add(1, Ordering::SeqCst);
        let task = tokio::spawn(forward(n, client, upstream.clone(), state.clone()));
        let mut tasks = tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

/// The same address again (the port was free a moment ago; a few tries,
/// in case the kernel has not let go of it yet).
async fn rebind(addr: SocketAddr) -> TcpListener {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                tries += 1;
                assert!(tries < 100, "cannot listen on {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Carries connection `n` both ways until either end closes it.
async fn forward(n: u64, client: TcpStream, upstream: Upstream, mut state: watch::Receiver<State>) {
    // A connection made during a cut is answered only once it heals.
    if state.wait_for(|s| s.flows(n)).await.is_err() {
        return;
    }
    let _ = client.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (up_read, up_write): (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) = match &upstream {
        Upstream::Tcp(addr) => match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Err(_) => return,
        },
        Upstream::Unix(path) => match UnixStream::connect(path).await {
            Ok(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Err(_) => return,
        },
    };
    let there = pump(n, Box::new(client_read), up_write, state.clone());
    let back = pump(n, up_read, Box::new(client_write), state);
    // Either direction ending (an end closed, or failed) ends both.
    tokio::select! {
        () = there => {}
        () = back => {}
    }
}

/// Copies `from` to `to`, each chunk held while the link is cut (and no
/// more read meanwhile: the kernel's buffers fill, as a real black hole's
/// would not, but neither end learns anything either way). At the end of
/// `from`, `to` is shut down once the link is up.
async fn pump(
    n: u64,
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    mut to: Box<dyn AsyncWrite + Send + Unpin>,
    mut state: watch::Receiver<State>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = from.read(&mut buf).await.unwrap_or(0);
        if state.wait_for(|s| s.flows(n)).await.is_err() {
            return;
        }
        if read == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..read]).await.is_err() {
            return;
        }
    }
}
