//! `serve`: binds, starts the background upkeep, serves HTTP or HTTPS until
//! SIGINT/SIGTERM. The `listening on` line is logged from here, and tools
//! that wait for it filter the log on this module (`latchkey_server::server`).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use tokio::sync::watch;

use crate::cli::ServeArgs;
use crate::demo::ensure_demo_user;
use crate::error::{Error, Result};
use crate::state::{AppState, Settings};
use crate::store::{self, Store};

/// Opens the database `args` name and builds the shared state.
pub async fn build_state(args: &ServeArgs, issuer: String) -> Result<AppState> {
    let store: Arc<dyn Store> = store::open(&args.db.db).await?;
    let settings = Settings {
        issuer,
        access_ttl: args.access_ttl.as_secs(),
        refresh_ttl: args.refresh_ttl.as_secs(),
        leeway: args.leeway.as_secs(),
        trusted_proxies: args.trusted_proxies().map_err(Error::Invalid)?,
        hash_queue: args.hash_queue,
        events_ping: args.events_ping,
    };
    AppState::new(settings, store).await
}

/// A running server: its address, and a handle to stop it.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Server {
    /// Binds and starts serving in the background.
    pub async fn start(args: ServeArgs) -> Result<Self> {
        args.validate().map_err(Error::Invalid)?;
        let (listener, addr) = bind(args.addr)?;
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{addr}");
        let issuer = args.issuer.clone().unwrap_or_else(|| url.clone());
        let state = build_state(&args, issuer).await?;
        // `validate` refused --demo with anything but a SQLite file.
        if args.demo
            && let Some(path) = args.db.db.sqlite_path()
        {
            ensure_demo_user(state.store.as_ref(), path, &url).await?;
        }
        let app = crate::http::router(state.clone());
        let (shutdown, rx) = watch::channel(false);
        crate::upkeep::spawn(state.clone(), rx.clone());
        let task = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = load_tls(cert, key).await?;
                tokio::spawn(serve_tls(listener, tls, app, rx))
            }
            _ => tokio::spawn(serve_plain(listener, app, rx)),
        };
        tracing::info!(%addr, issuer = %state.settings.issuer, "latchkey-server listening on {url}");
        Ok(Self {
            addr,
            state,
            shutdown,
            task,
        })
    }

    /// Stops accepting, lets requests in flight finish, and returns. Open
    /// live-updates streams end at once: a graceful shutdown would wait for
    /// them forever.
    pub async fn stop(self) -> Result<()> {
        self.state.live.close();
        let _ = self.shutdown.send(true);
        self.task.await?
    }
}

/// A non-blocking listener on `addr`, and the address it got (port 0 picks
/// one).
fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let listen_error = |source| Error::Listen { addr, source };
    let listener = TcpListener::bind(addr).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    Ok((listener, bound))
}

async fn load_tls(cert: &Path, key: &Path) -> Result<RustlsConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|source| Error::Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })
}

async fn serve_plain(
    listener: TcpListener,
    app: Router,
    mut rx: watch::Receiver<bool>,
) -> Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(Error::io("cannot serve HTTP"))?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = rx.wait_for(|stop| *stop).await;
    })
    .await
    .map_err(Error::io("serving HTTP failed"))
}

async fn serve_tls(
    listener: TcpListener,
    tls: RustlsConfig,
    app: Router,
    mut rx: watch::Receiver<bool>,
) -> Result<()> {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        let _ = rx.wait_for(|stop| *stop).await;
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    axum_server::from_tcp_rustls(listener, tls)
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .map_err(Error::io("serving HTTPS failed"))
}

/// `serve`: runs until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<()> {
    // Catch the signals before saying "listening": a SIGTERM sent right
    // after that line must still stop the server cleanly.
    let stop = shutdown_signal().map_err(Error::io("cannot catch SIGINT and SIGTERM"))?;
    let mut server = Server::start(args).await?;
    tokio::select! {
        _ = stop => {
            tracing::info!("shutting down");
            server.stop().await
        }
        ended = &mut server.task => ended?,
    }
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are in place
/// once this returns.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
