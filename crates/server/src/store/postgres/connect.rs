//! From a `postgres://` URL to a bounded pool of connections: the URL's
//! options this server reads itself (`pool_size`, `sslrootcert`), TLS by
//! the workspace's rustls (ring) checking the server's certificate against
//! the system's roots (and `sslrootcert`'s), the pool's time limits, and which failures mean "the database cannot be reached now" (a
//! 503 the client retries) rather than a fault of the server (a 500).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// Connections each server process keeps at most, unless the URL says
/// `pool_size=N`.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How long a request waits for a free connection, a new one, or the check
/// of a pooled one, before it is answered 503.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// Run on every new connection: two limits, each unless the operator set
/// one already (in `postgresql.conf`, for the role or the database, or with
/// the URL's `options`).
/// * PostgreSQL ends a transaction of ours that sits idle for 10 s. This
///   server never leaves one idle (its statements follow each other at
///   once), so only a transaction whose connection vanished is idle that
///   long. Without the limit it would keep its locks (a user's row, so
///   every push of theirs, or a refresh token's) until PostgreSQL's own TCP
///   keepalive noticed the connection gone: two hours by default.
/// * A statement waits at most 4 s for a lock, then fails (a 503, retried
///   by the client), as a call gives up after 5 s anyway. So a vanished
///   transaction that was waiting for a lock gives up before the one
///   holding it is ended, instead of taking the lock and keeping it
///   another 10 s in its turn: however many vanished together, the locks
///   they held are free within 10 s.
const SESSION_SETUP: &str = "\
    SELECT set_config('idle_in_transaction_session_timeout', '10s', false) \
     WHERE current_setting('idle_in_transaction_session_timeout') = '0'; \
    SELECT set_config('lock_timeout', '4s', false) \
     WHERE current_setting('lock_timeout') = '0'";

/// The options this server reads from the URL itself: tokio-postgres
/// knows neither (the second is libpq's: a PEM file of CA certificates to
/// trust besides the system's, as for a managed database's private CA).
const POOL_SIZE_OPTION: &str = "pool_size";
const ROOT_CERT_OPTION: &str = "sslrootcert";

/// `sslmode` values of libpq that tokio-postgres does not parse. Both mean
/// `require` here, where the certificate is always checked.
const VERIFYING_SSL_MODES: [&str; 2] = ["sslmode=verify-ca", "sslmode=verify-full"];

/// Why a URL cannot be used, in a sentence.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct BadUrl(String);

/// Where the database is and how to reach it, as read once from a URL:
/// the pool's connections and the listener's are made alike.
#[derive(Clone)]
pub(super) struct Target {
    config: tokio_postgres::Config,
    /// `None`: `sslmode=disable`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pool_size: usize,
}

/// What `url` says. Connects to nothing yet.
pub(super) fn target(url: &str) -> Result<Target, BadUrl> {
    let own = own_options(url)?;
    let config: tokio_postgres::Config = own
        .url
        .parse()
        .map_err(|e| BadUrl(format!("not a PostgreSQL URL: {}", describe(&e))))?;
    let tls = match config.get_ssl_mode() {
        SslMode::Disable => None,
        _ => Some(tls(own.root_cert.as_deref())?),
    };
    Ok(Target {
        config,
        tls,
        pool_size: own.pool_size,
    })
}

impl Target {
    /// The bounded pool. Connects to nothing yet: the first query does.
    pub(super) fn pool(&self) -> Result<Pool, BadUrl> {
        let manager_config = ManagerConfig {
            // A connection the server closed (a restart) is noticed by its
            // connection task; one that only looks alive fails its next
            // query with a 503, which the client retries.
            recycling_method: RecyclingMethod::Fast,
        };
        let config = self.config.clone();
        let manager = match &self.tls {
            None => Manager::from_config(config, NoTls, manager_config),
            Some(tls) => Manager::from_config(config, tls.clone(), manager_config),
        };
        Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    match tokio::time::timeout(POOL_WAIT, client.simple_query(SESSION_SETUP)).await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(HookError::Backend(e)),
                        Err(_) => Err(HookError::message(format!(
                            "no answer from the database within {} s",
                            POOL_WAIT.as_secs()
                        ))),
                    }
                })
            }))
            .build()
            .map_err(|e| BadUrl(format!("cannot make the connection pool: {e}")))
    }

    /// A connection of its own, outside the pool (one that LISTENs), and
    /// the task driving it, which passes each notification to `heard` and
    /// ends when the connection does. Gives up after the pool's wait.
    pub(super) async fn connect(
        &self,
        heard: impl FnMut() + Send + 'static,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
        let connecting = async {
            match &self.tls {
                None => drive(self.config.connect(NoTls).await?, heard),
                Some(tls) => drive(self.config.connect(tls.clone()).await?, heard),
            }
        };
        tokio::time::timeout(POOL_WAIT, connecting)
            .await
            .map_err(|_| waited_too_long())?
    }
}

/// Spawns the task driving `connection`, passing its notifications on.
fn drive<S, T>(
    (client, mut connection): (tokio_postgres::Client, tokio_postgres::Connection<S, T>),
    mut heard: impl FnMut() + Send + 'static,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_postgres::AsyncMessage;
    let task = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let AsyncMessage::Notification(_) = message {
                heard();
            }
        }
    });
    Ok((client, task))
}

/// The pool for `url`. Connects to nothing yet: the first query does.
#[cfg(test)]
fn pool(url: &str) -> Result<Pool, BadUrl> {
    target(url)?.pool()
}

/// A URL split into what tokio-postgres reads and what this server does.
#[derive(Debug, PartialEq)]
struct OwnOptions {
    /// The URL without this server's options, and with libpq's verifying
    /// `sslmode`s as `require`.
    url: String,
    pool_size: usize,
    root_cert: Option<PathBuf>,
}

fn own_options(url: &str) -> Result<OwnOptions, BadUrl> {
    let mut own = OwnOptions {
        url: url.to_owned(),
        pool_size: DEFAULT_POOL_SIZE,
        root_cert: None,
    };
    let Some((main, query)) = url.split_once('?') else {
        return Ok(own);
    };
    let mut rest = Vec::new();
    for option in query.split('&') {
        match option.split_once('=') {
            Some((POOL_SIZE_OPTION, n)) => {
                own.pool_size = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    BadUrl(format!(
                        "{POOL_SIZE_OPTION} must be a whole number over 0, not {n:?}"
                    ))
                })?;
            }
            Some((ROOT_CERT_OPTION, path)) => own.root_cert = Some(percent_decoded(path).into()),
            _ if VERIFYING_SSL_MODES.contains(&option) => rest.push("sslmode=require"),
            _ => rest.push(option),
        }
    }
    own.url = if rest.is_empty() {
        main.to_owned()
    } else {
        format!("{main}?{}", rest.join("&"))
    };
    Ok(own)
}

/// `s` with its `%XX` escapes decoded (a URL option's value).
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// TLS to the database: rustls on ring, the server's certificate checked
/// against the system's roots and those of `root_cert` (as libpq's
/// `verify-full` would).
fn tls(root_cert: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, BadUrl> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let extra_roots = match root_cert {
        None => Vec::new(),
        Some(path) => {
            let unreadable = |e: &dyn std::fmt::Display| {
                BadUrl(format!(
                    "cannot read {ROOT_CERT_OPTION} {}: {e}",
                    path.display()
                ))
            };
            let pem = std::fs::read(path).map_err(|e| unreadable(&e))?;
            let roots = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unreadable(&e))?;
            if roots.is_empty() {
                return Err(unreadable(&"no certificate in it"));
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let setup_failed = |e: rustls::Error| BadUrl(format!("cannot set up TLS to the database: {e}"));
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(setup_failed)?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(setup_failed)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `e` with its causes: tokio-postgres says only "db error" or "error
/// connecting to server" by itself. For the server's own errors only the
/// message and its SQLSTATE: their DETAIL may quote a row (a note's text).
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Whether `e` says the database cannot be reached now (down, restarting,
/// failing over, refusing connections, too busy to answer in time) rather
/// than that a query was wrong.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // Class 08: connection exceptions. 57P01-03: shut down or starting
        // up. 53300: too many connections. 25006: a read-only transaction,
        // which is a standby, as right after a failover.
        // 55P03: a lock not free within `lock_timeout` (see SESSION_SETUP),
        // and 57014: a statement cancelled (an operator's
        // `statement_timeout`): the database is too busy now.
        let code = code.code();
        return code.starts_with("08")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "53300" | "25006" | "55P03" | "57014"
            );
    }
    // Not an answer from the server: the socket or TLS failed.
    std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>())
}

/// Whether `e` is a statement prepared before the schema changed and
/// whose rows would now differ ("cached plan must not change result
/// type"): prepared again, it runs.
pub(super) fn stale_statement(e: &StoreError) -> bool {
    matches!(e, StoreError::Pg(pg) if pg.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::FEATURE_NOT_SUPPORTED && db.message().starts_with("cached plan")
    }))
}

/// Whether `e` lost a race another transaction won (a serialization
/// failure or a deadlock): running it again is the answer.
pub(super) fn lost_race(e: &StoreError) -> bool {
    matches!(e, StoreError::Pg(pg) if pg.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    }))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if unreachable(&e) {
            StoreError::Unavailable(describe(&e))
        } else {
            StoreError::Pg(e)
        }
    }
}

/// Every pool failure is a database that cannot be reached: no connection
/// came free, a new one could not be made (refused, timed out, TLS,
/// authentication), or the pool is closing.
impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => StoreError::Unavailable(describe(&e)),
            // The session's setup query: as any other query's failure.
            PoolError::PostCreateHook(HookError::Backend(e)) => StoreError::from(e),
            PoolError::PostCreateHook(HookError::Message(why)) => {
                StoreError::Unavailable(why.into_owned())
            }
            PoolError::Timeout(_) => waited_too_long(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

fn waited_too_long() -> StoreError {
    StoreError::Unavailable(format!(
        "no connection to the database within {} s",
        POOL_WAIT.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_options_are_taken_out_of_the_url() {
        let own = own_options("postgres://u@h/db").unwrap();
        assert_eq!(
            own,
            OwnOptions {
                url: "postgres://u@h/db".into(),
                pool_size: DEFAULT_POOL_SIZE,
                root_cert: None
            }
        );
        let own = own_options(
            "postgres://u@h/db?sslmode=verify-full&pool_size=4&connect_timeout=3\
             &sslrootcert=%2Fetc%2Fdb%20ca.pem",
        )
        .unwrap();
        assert_eq!(
            own,
            OwnOptions {
                url: "postgres://u@h/db?sslmode=require&connect_timeout=3".into(),
                pool_size: 4,
                root_cert: Some("/etc/db ca.pem".into())
            }
        );
        let own = own_options("postgres://u@h/db?pool_size=2").unwrap();
        assert_eq!(own.url, "postgres://u@h/db");
        for bad in ["0", "x", "-1", ""] {
            assert!(own_options(&format!("postgres://h/db?pool_size={bad}")).is_err());
        }
    }

    #[test]
    fn a_bad_url_is_refused_before_anything_connects() {
        for url in [
            "postgres://h/db?sslmode=sometimes",
            "postgres://h/db?no_such_option=1",
        ] {
            let e = pool(url).expect_err(url).to_string();
            assert!(e.starts_with("not a PostgreSQL URL"), "{e}");
        }
        assert!(pool("postgres://u:pw@localhost:1/db?sslmode=require").is_ok());
        let e = pool("postgres://h/db?sslmode=require&sslrootcert=/nonexistent.pem")
            .expect_err("a missing root certificate");
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
    }
}
