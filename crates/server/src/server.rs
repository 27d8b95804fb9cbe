//! `serve`: binds, starts the background upkeep, serves HTTP or HTTPS until
//! SIGINT/SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::sync::watch;

use crate::config::ServeArgs;
use crate::state::{AppState, Settings};
use crate::store::{SqliteStore, Store};

/// Opens the database at `db` and builds the shared state.
pub async fn build_state(args: &ServeArgs, issuer: String) -> anyhow::Result<AppState> {
    let store: Arc<dyn Store> = Arc::new(open_store(&args.db.db).await?);
    let settings = Settings {
        issuer,
        access_ttl: args.access_ttl.as_secs(),
        refresh_ttl: args.refresh_ttl.as_secs(),
        leeway: args.leeway.as_secs(),
        trusted_proxies: args.trusted_proxies().map_err(anyhow::Error::msg)?,
        hash_queue: args.hash_queue,
    };
    AppState::new(settings, store).await
}

/// Opens (creating) the SQLite database, off the runtime.
pub async fn open_store(path: &Path) -> anyhow::Result<SqliteStore> {
    let path = path.to_owned();
    Ok(tokio::task::spawn_blocking(move || SqliteStore::open(&path)).await??)
}

/// A running server: its address, and a handle to stop it.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Binds and starts serving in the background.
    pub async fn start(args: ServeArgs) -> anyhow::Result<Self> {
        args.validate().map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(args.addr).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
                "cannot listen on {}: the address is already in use",
                args.addr
            ),
            _ => anyhow::anyhow!("cannot listen on {}: {e}", args.addr),
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let issuer = args
            .issuer
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        let state = build_state(&args, issuer).await?;
        if args.demo {
            crate::cli::ensure_demo_user(
                state.store.as_ref(),
                &args.db.db,
                &format!("{scheme}://{addr}"),
            )
            .await?;
        }
        let app = crate::http::router(state.clone());
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(upkeep(state.clone(), rx.clone()));
        tokio::spawn(prune_ops(state.clone(), rx.clone()));
        let task = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot load the TLS certificate {} and key {}",
                            cert.display(),
                            key.display()
                        )
                    })?;
                tokio::spawn(serve_tls(listener, tls, app, rx))
            }
            _ => tokio::spawn(serve_plain(listener, app, rx)),
        };
        tracing::info!(%addr, issuer = %state.settings.issuer, "latchkey-server listening on {scheme}://{addr}");
        Ok(Self {
            addr,
            state,
            shutdown,
            task,
        })
    }

    /// Stops accepting, lets requests in flight finish, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await?
    }
}

async fn serve_plain(
    listener: TcpListener,
    app: Router,
    mut rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = rx.wait_for(|stop| *stop).await;
    })
    .await?;
    Ok(())
}

async fn serve_tls(
    listener: TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    app: Router,
    mut rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        let _ = rx.wait_for(|stop| *stop).await;
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    axum_server::from_tcp_rustls(listener, tls)
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await?;
    Ok(())
}

/// Polls for revocations and key rotations made by other processes (so they
/// apply within a second) and prunes caches now and then.
async fn upkeep(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = state.refresh_from_store().await {
            tracing::warn!(error = %format!("{e:#}"), "polling the database failed");
        }
        rounds += 1;
        if rounds.is_multiple_of(240)
            && let Err(e) = state.prune().await
        {
            tracing::warn!(error = %format!("{e:#}"), "pruning failed");
        }
    }
}

/// How often old op results are pruned.
const OP_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Prunes old op results (see [`AppState::prune_ops`]) now and then, in its
/// own task so that a long prune never delays the revocation polling.
async fn prune_ops(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(OP_PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            pruned = state.prune_ops(crate::now()) => match pruned {
                Ok(0) => {}
                Ok(n) => tracing::info!(ops = n, "pruned old op results"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "pruning op results failed"),
            },
        }
    }
}

/// `serve`: runs until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Catch the signals before saying "listening": a SIGTERM sent right
    // after that line must still stop the server cleanly.
    let stop = shutdown_signal().context("cannot catch SIGINT and SIGTERM")?;
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
