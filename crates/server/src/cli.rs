//! The command line, as clap types: the subcommands and every flag. Every
//! flag also reads `LATCHKEY_<FLAG>`; durations are humantime (`2s`, `15m`,
//! `30d`). The doc comments of these types are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

// Boolean flags parse with this so that their variables may say 1/0,
// yes/no, on/off as well as true/false.
use clap::builder::{BoolishValueParser, OsStringValueParser, TypedValueParser as _};
use clap::{Args, Parser, Subcommand};

use crate::proxy::{Cidr, TrustedProxies};
use crate::store::Location;

/// The Latchkey auth + sync server.
#[derive(Debug, Parser)]
#[command(name = "latchkey-server", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Copy the database to a new file, consistently, while the server
    /// runs (SQLite's online backup), and check the copy. Restore: stop the
    /// server, put the copy in place of the database (removing its -wal and
    /// -shm files), start it; devices give back what the copy lacks.
    Backup {
        /// The new file (never overwritten).
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        db: DbArg,
    },
    /// Copy a SQLite server's whole state into a PostgreSQL database, and
    /// check the copy.
    ///
    /// Users, sessions, refresh tokens, signing keys, notes, history, op
    /// results and sign-in throttling are copied in one transaction; every
    /// table's rows are counted and summed (SHA-256) on both sides, and any
    /// difference rolls it all back. Stop the server first: what it writes
    /// once the copy has begun is not copied. A source of an older version
    /// is migrated first, as the server's next start would do; one of this
    /// version is only read. Then serve with --db on the PostgreSQL URL and
    /// the same --issuer: devices stay signed in and in sync.
    MigrateStore(MigrateArgs),
}

/// What `migrate-store` copies, and where to.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The SQLite database file of the server to copy (never created).
    #[arg(
        long,
        value_name = "FILE",
        value_parser = OsStringValueParser::new().map(Location::parse)
    )]
    pub from: Location,
    /// The PostgreSQL database to copy into,
    /// postgres://USER:PASSWORD@HOST:PORT/DBNAME, with the options of
    /// --db (it must exist, in UTF8; its tables are made if missing). The
    /// variable keeps the password out of the process list.
    #[arg(
        long,
        env = "LATCHKEY_MIGRATE_TO",
        hide_env_values = true,
        value_name = "URL",
        value_parser = OsStringValueParser::new().map(Location::parse)
    )]
    pub to: Location,
    /// Copy into a database that holds data already (without it, that is
    /// refused): everything in it is deleted, in the same transaction.
    #[arg(long)]
    pub replace: bool,
}

/// Where the database lives; shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct DbArg {
    /// The database: a SQLite file (created, mode 0600, if missing), or a
    /// PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DBNAME, which
    /// several servers may share (the database must exist, in UTF8; tables
    /// are made at start). URL options: sslmode=disable|prefer|require
    /// (TLS checks the certificate against the system's roots),
    /// sslrootcert=FILE (a PEM file of CAs to trust besides), pool_size=N
    /// (connections per process, default 16), connect_timeout=SECONDS and
    /// PostgreSQL's other usual ones.
    // The variable's value is not shown in --help: it may hold a password.
    #[arg(
        long,
        env = "LATCHKEY_DB",
        hide_env_values = true,
        default_value = "./latchkey-server.db",
        value_name = "FILE|URL",
        value_parser = OsStringValueParser::new().map(Location::parse)
    )]
    pub db: Location,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (try e.g. 30s, 15m, 30d)"))
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port (logged at start).
    #[arg(long, env = "LATCHKEY_ADDR", default_value = "127.0.0.1:8787")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub db: DbArg,
    /// The issuer URL put in every token's `iss` [default: http(s)://ADDR].
    #[arg(long, env = "LATCHKEY_ISSUER")]
    pub issuer: Option<String>,
    /// Access-token lifetime.
    #[arg(long, env = "LATCHKEY_ACCESS_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_ttl: Duration,
    /// Absolute session lifetime: how long a sign-in lasts with refreshes.
    #[arg(long, env = "LATCHKEY_REFRESH_TTL", default_value = "30d", value_parser = parse_duration)]
    pub refresh_ttl: Duration,
    /// Clock leeway for `exp`/`nbf` (at most 60s).
    #[arg(long, env = "LATCHKEY_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub leeway: Duration,
    /// Create the user `demo` with a generated password (kept beside the
    /// database, mode 0600) and print the credentials at every start.
    #[arg(long, env = "LATCHKEY_DEMO", value_parser = BoolishValueParser::new())]
    pub demo: bool,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, env = "LATCHKEY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "LATCHKEY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (passwords and tokens then
    /// cross the network in clear: only behind a TLS-terminating proxy).
    #[arg(long, env = "LATCHKEY_INSECURE_HTTP", value_parser = BoolishValueParser::new())]
    pub insecure_http: bool,
    /// A proxy (load balancer) whose X-Forwarded-For names the client, as
    /// an address block (10.0.0.0/8, fd00::/8) or one address. Repeatable;
    /// the variable takes a comma-separated list, used when no flag is given.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "LATCHKEY_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<String>,
    /// Sign-ins that may wait for (or run in) the password hasher at once;
    /// past it they are answered 503 [default: 16 per hashing thread, at
    /// least 64].
    #[arg(long, env = "LATCHKEY_HASH_QUEUE", value_name = "N")]
    pub hash_queue: Option<usize>,
    /// The longest a live-updates stream (`GET /v1/sync/events`) stays
    /// silent before a `: ping` comment keeps proxies from closing it
    /// (1s to 15s).
    #[arg(long, env = "LATCHKEY_EVENTS_PING", default_value = "15s", value_parser = parse_duration)]
    pub events_ping: Duration,
}

impl ServeArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.leeway > Duration::from_secs(latchkey_protocol::MAX_LEEWAY_SECS) {
            return Err("--leeway may be at most 60s".into());
        }
        if self.access_ttl < Duration::from_secs(1) {
            return Err("--access-ttl must be at least 1s".into());
        }
        if self.refresh_ttl < Duration::from_secs(1) {
            return Err("--refresh-ttl must be at least 1s".into());
        }
        if self.tls_cert.is_none() && !self.addr.ip().is_loopback() && !self.insecure_http {
            return Err(format!(
                "refusing to serve plain HTTP on {}, a non-loopback address: passwords and \
                 tokens would cross the network in clear. Give --tls-cert and --tls-key, \
                 or --insecure-http if a TLS proxy sits in front",
                self.addr
            ));
        }
        self.trusted_proxies()?;
        let ping = Duration::from_secs(latchkey_protocol::sync::EVENTS_PING_SECS);
        if self.events_ping < Duration::from_secs(1) || self.events_ping > ping {
            return Err(format!(
                "--events-ping must be between 1s and {}s",
                ping.as_secs()
            ));
        }
        if self.demo && self.db.db.sqlite_path().is_none() {
            return Err(
                "--demo keeps its password beside a SQLite database file; with \
                 PostgreSQL add a user with `user add`"
                    .into(),
            );
        }
        if self.hash_queue == Some(0) {
            return Err("--hash-queue must be at least 1".into());
        }
        if let Some(issuer) = &self.issuer
            && !(issuer.starts_with("https://") || issuer.starts_with("http://"))
        {
            return Err("--issuer must be an http:// or https:// URL".into());
        }
        Ok(())
    }

    /// The parsed `--trusted-proxy` blocks, or a sentence saying which one
    /// is wrong.
    pub fn trusted_proxies(&self) -> Result<TrustedProxies, String> {
        self.trusted_proxy
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| {
                c.parse::<Cidr>()
                    .map_err(|e| format!("--trusted-proxy: {e}"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

/// A user and where their new password comes from.
#[derive(Debug, Clone, Args)]
pub struct PasswordArgs {
    #[arg(long, env = "LATCHKEY_USERNAME")]
    pub username: String,
    /// Read the password from the first line of standard input.
    #[arg(long, env = "LATCHKEY_PASSWORD_STDIN", value_parser = BoolishValueParser::new())]
    pub password_stdin: bool,
    #[command(flatten)]
    pub db: DbArg,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. Prompts for the password unless --password-stdin.
    Add(PasswordArgs),
    /// List users.
    List {
        #[command(flatten)]
        db: DbArg,
    },
    /// Set a user's password (8 characters to 1024 bytes) and revoke every
    /// session of theirs. Prompts for it unless --password-stdin.
    Passwd(PasswordArgs),
    /// Delete a user with all their notes, history and sessions, for good.
    Delete {
        #[arg(long, env = "LATCHKEY_USERNAME")]
        username: String,
        /// Confirm the deletion (nothing is deleted without it).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List a user's live sessions: device, created, last seen, id.
    List {
        #[arg(long, env = "LATCHKEY_USERNAME")]
        username: String,
        #[command(flatten)]
        db: DbArg,
    },
    /// Revoke every session of a user (a running server notices within 1 s).
    Revoke {
        #[arg(long, env = "LATCHKEY_USERNAME")]
        username: String,
        #[command(flatten)]
        db: DbArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new current signing key; the old one stays in the JWKS while
    /// tokens it signed may still be valid.
    Rotate {
        #[command(flatten)]
        db: DbArg,
    },
}
