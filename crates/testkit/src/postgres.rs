//! PostgreSQL for tests, and the choice of store the server's tests run on.
//!
//! [`PgCluster`] is a private cluster: `initdb` into a temporary directory,
//! the server listening on a Unix socket there and on no TCP port (so it
//! never meets a system cluster or another test run), and a fresh database
//! per test ([`PgCluster::database`]). PostgreSQL refuses to run as root:
//! as root the cluster runs as the `postgres` user. [`PgCluster::shared`] is
//! the one cluster of a test process, started on first use.
//!
//! [`TestDb`] is one test's database on the store `LATCHKEY_TEST_STORE`
//! names: `sqlite` (the default) or `postgres`.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The variable choosing the store the server's tests run on.
pub const TEST_STORE_ENV: &str = "LATCHKEY_TEST_STORE";

/// Names the folder of PostgreSQL's programs (`initdb`, `postgres`, `psql`)
/// instead of the newest `/usr/lib/postgresql/<version>/bin`.
pub const PG_BIN_ENV: &str = "LATCHKEY_PG_BIN";

/// Set (to anything), a stopped cluster's folder stays, with its server
/// log, and its path is printed: to see what a failing test did.
pub const PG_KEEP_ENV: &str = "LATCHKEY_PG_KEEP";

/// The user the tests' clusters let in (trusted: no password).
const USER: &str = "latchkey";

/// Whether this run's server tests are on PostgreSQL
/// (`LATCHKEY_TEST_STORE=postgres`).
///
/// # Panics
/// On a value that is neither `sqlite` nor `postgres`.
pub fn on_postgres() -> bool {
    match std::env::var(TEST_STORE_ENV).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => false,
        Ok("postgres") => true,
        Ok(other) => panic!("{TEST_STORE_ENV}={other:?}: say sqlite or postgres"),
    }
}

/// True, saying why, if this run is on PostgreSQL: for a test that only
/// makes sense on SQLite (its file, its permissions, its WAL) to return
/// early.
pub fn skip_on_postgres(why: &str) -> bool {
    let skip = on_postgres();
    if skip {
        println!("skipped on PostgreSQL: {why}");
    }
    skip
}

/// One test's database on the store of this run: a SQLite file in a
/// temporary directory, or a new database in the process's cluster.
pub struct TestDb {
    dir: tempfile::TempDir,
    arg: String,
}

impl TestDb {
    /// A new, empty database (a SQLite file named `name` when on SQLite).
    ///
    /// # Panics
    /// If no temporary directory can be made, or PostgreSQL cannot start.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let arg = if on_postgres() {
            PgCluster::shared().database()
        } else {
            dir.path()
                .join(name)
                .to_str()
                .expect("a UTF-8 temporary path")
                .to_owned()
        };
        Self { dir, arg }
    }

    /// What `--db` (or `LATCHKEY_DB`) takes: the file or the URL.
    pub fn arg(&self) -> &str {
        &self.arg
    }

    /// A temporary directory of this test's own, whichever the store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite file, on SQLite.
    pub fn sqlite_path(&self) -> Option<&Path> {
        (!on_postgres()).then(|| Path::new(&self.arg))
    }

    /// Runs `sql` on this database with `psql` (PostgreSQL only); its rows,
    /// one per line, columns tab-separated.
    ///
    /// # Panics
    /// On SQLite, or if the statement fails.
    pub fn psql(&self, sql: &str) -> String {
        assert!(on_postgres(), "psql on a SQLite test database");
        PgCluster::shared().psql(&self.arg, sql)
    }
}

/// A private PostgreSQL cluster, stopped when dropped (the shared one when
/// the process exits).
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The `postgres` user's ids, when running as root.
    run_as: Option<(u32, u32)>,
    /// Server options past the kit's own (TLS, see
    /// [`PgCluster::start_tls`]).
    options: Vec<String>,
    /// Whether commits reach the disk, as in production
    /// ([`PgCluster::start_durable`]).
    durable: bool,
    server: Mutex<Option<std::process::Child>>,
    databases: AtomicU32,
}

impl PgCluster {
    /// Whether PostgreSQL's programs are installed (see [`PG_BIN_ENV`]).
    pub fn available() -> bool {
        bin_dir().is_some()
    }

    /// The cluster of this test process, started on first use and stopped
    /// when the process exits.
    ///
    /// # Panics
    /// If it cannot start.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = PgCluster::start();
            extern "C" fn stop_shared() {
                if let Some(cluster) = SHARED.get() {
                    cluster.stop();
                }
            }
            // SAFETY: registers a plain function, run once at exit.
            unsafe { libc::atexit(stop_shared) };
            cluster
        })
    }

    /// A new cluster of its own (about two seconds): `initdb`, then the
    /// server, waited for until it answers. Durability is off (`fsync`,
    /// `synchronous_commit`): these databases live as long as a test run.
    ///
    /// # Panics
    /// If PostgreSQL is not installed or does not start.
    pub fn start() -> Self {
        let cluster = Self::init();
        cluster.start_server();
        cluster
    }

    /// A new cluster of its own whose commits reach the disk before they
    /// are answered (`fsync` and `synchronous_commit` on, as PostgreSQL
    /// ships): for benchmarks beside SQLite's `synchronous=FULL`.
    ///
    /// # Panics
    /// If PostgreSQL is not installed or does not start.
    pub fn start_durable() -> Self {
        let mut cluster = Self::init();
        cluster.durable = true;
        cluster.start_server();
        cluster
    }

    /// A new cluster of its own that also listens on 127.0.0.1 (its port:
    /// [`PgCluster::tcp_url`]) and takes TLS there, with a certificate for
    /// 127.0.0.1 from a CA of its own, whose PEM file is returned. None,
    /// said, if `openssl` is not installed to make them.
    ///
    /// # Panics
    /// If PostgreSQL is not installed or does not start.
    pub fn start_tls() -> Option<(Self, PathBuf)> {
        let mut cluster = Self::init();
        let made = crate::cert::localhost_cert(&cluster.dir)?;
        if let Some((uid, gid)) = cluster.run_as {
            for file in [&made.cert, &made.key] {
                chown(file, uid, gid);
            }
        }
        cluster.options = [
            "listen_addresses=127.0.0.1".to_owned(),
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", made.cert.display()),
            format!("ssl_key_file={}", made.key.display()),
        ]
        .into_iter()
        .flat_map(|o| ["-c".to_owned(), o])
        .collect();
        cluster.start_server();
        Some((cluster, made.ca))
    }

    /// `initdb` into a new folder; the server not started.
    fn init() -> Self {
        let bin = bin_dir().expect(
            "PostgreSQL's programs (initdb, postgres, psql): install the postgresql package \
             (scripts/setup.sh does) or set LATCHKEY_PG_BIN",
        );
        let dir = tempfile::Builder::new()
            .prefix("latchkey-pg-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let run_as = postgres_user();
        if let Some((uid, gid)) = run_as {
            chown(&dir, uid, gid);
        }
        let cluster = PgCluster {
            port: crate::free_port(),
            dir,
            bin,
            run_as,
            options: Vec::new(),
            durable: false,
            server: Mutex::new(None),
            databases: AtomicU32::new(0),
        };
        let data = cluster.dir.join("data");
        let out = cluster
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-N",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    /// Starts the server (again), and waits until it answers.
    ///
    /// # Panics
    /// If it is running, or does not start.
    pub fn start_server(&self) {
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        assert!(server.is_none(), "the server is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("the server log");
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses="])
            .args(["-c", "max_connections=300"]);
        if !self.durable {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        cmd.args(["-c", "log_min_error_statement=error"])
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(log);
        *server = Some(spawn_for_life(cmd));
        drop(server);
        self.wait_ready();
    }

    /// Stops the server as an administrator's restart does (a fast
    /// shutdown: connections are told and closed), and waits until it is
    /// gone. Its databases stay, for [`PgCluster::start_server`].
    pub fn stop_server(&self) {
        self.end_server(libc::SIGINT);
    }

    /// Ends the server with `signal` and reaps it; nothing if not running.
    fn end_server(&self, signal: i32) {
        let child = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            crate::spawn::signal_pid(child.id(), signal);
            let _ = child.wait();
        }
    }

    /// A program of PostgreSQL's, run as the cluster's user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt as _;
            cmd.uid(uid).gid(gid).current_dir(&self.dir);
        }
        cmd
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self
                .command("psql")
                .args(self.psql_args("postgres"))
                .args(["-c", "SELECT 1"])
                .output()
                .expect("run psql");
            if out.status.success() {
                return;
            }
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start within 30 s: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn psql_args(&self, database: &str) -> Vec<String> {
        vec![
            "-X".into(),
            "-q".into(),
            "-At".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-h".into(),
            self.dir.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            USER.into(),
            "-d".into(),
            database.into(),
        ]
    }

    /// The URL of a new, empty database of this cluster (over its socket).
    ///
    /// # Panics
    /// If it cannot be made.
    pub fn database(&self) -> String {
        self.url(&self.database_name())
    }

    /// The name of a new, empty database of this cluster.
    ///
    /// # Panics
    /// If it cannot be made.
    pub fn database_name(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("t_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// The URL of the database `name` over TCP, for a cluster of
    /// [`PgCluster::start_tls`].
    pub fn tcp_url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// The URL of the database `name` reached over TCP at `addr`: a
    /// forwarder to [`PgCluster::socket`] ([`crate::TcpLink`]).
    pub fn url_via(&self, addr: std::net::SocketAddr, name: &str) -> String {
        format!("postgres://{USER}@{addr}/{name}")
    }

    /// The Unix socket the server listens on.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// Dumps the database `name` into a new file (`pg_dump
    /// --format=custom`, the cluster's own), whose path is returned.
    ///
    /// # Panics
    /// If `pg_dump` fails.
    pub fn dump(&self, name: &str) -> PathBuf {
        let file = self.dir.join(format!("{}.pgc", crate::unique("dump")));
        self.run_tool("pg_dump", &["--format=custom", "--file"], &file, name);
        file
    }

    /// Restores `file` of [`PgCluster::dump`] over the database `name`
    /// (`pg_restore --clean --if-exists`: what the dump holds replaces what
    /// is there). Nobody may be connected to it.
    ///
    /// # Panics
    /// If `pg_restore` fails.
    pub fn restore(&self, name: &str, file: &Path) {
        self.run_tool(
            "pg_restore",
            &["--clean", "--if-exists", "--single-transaction"],
            file,
            name,
        );
    }

    /// `program args file` on the database `name`, as the cluster's user.
    fn run_tool(&self, program: &str, args: &[&str], file: &Path, name: &str) {
        let out = self
            .command(program)
            .args(args)
            .arg(file)
            .args(["-h", &self.dir.display().to_string()])
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", name])
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL of the database `name` of this cluster.
    pub fn url(&self, name: &str) -> String {
        let socket_dir: String = form_urlencoded_path(&self.dir.display().to_string());
        format!("postgres://{USER}@{socket_dir}:{}/{name}", self.port)
    }

    /// Runs `sql` on `database` (a name, or a URL of this cluster) with
    /// `psql`; its rows, one per line, columns tab-separated.
    ///
    /// # Panics
    /// If the statement fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let name = database.rsplit('/').next().unwrap_or(database);
        let name = name.split('?').next().unwrap_or(name);
        let out = self
            .command("psql")
            .args(self.psql_args(name))
            .args(["-F", "\t", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server at once (nothing in it needs keeping) and removes
    /// its folder.
    fn stop(&self) {
        // SIGQUIT: PostgreSQL's immediate shutdown.
        self.end_server(libc::SIGQUIT);
        if std::env::var_os(PG_KEEP_ENV).is_some() {
            eprintln!("PostgreSQL test cluster kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `s` with every byte but letters, digits, `-`, `_` and `.` percent-encoded
/// (a socket folder as a URL's host).
fn form_urlencoded_path(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Starts `cmd` from a thread that lives as long as the child, which is
/// told to quit (SIGQUIT) when that thread ends: so a test process killed
/// outright takes its PostgreSQL with it.
fn spawn_for_life(mut cmd: Command) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres".into())
        .spawn(move || {
            let child = cmd.spawn();
            let pid = child.as_ref().ok().map(std::process::Child::id);
            let _ = tx.send(child);
            // Stay until the server is gone: the death signal is tied to
            // this thread, not to the process.
            if let Some(pid) = pid {
                wait_gone(pid);
            }
        })
        .expect("a thread for PostgreSQL");
    rx.recv()
        .expect("the spawning thread")
        .expect("start postgres")
}

/// Blocks while process `pid` exists (polling: its parent reaps it).
fn wait_gone(pid: u32) {
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The folder of PostgreSQL's programs: [`PG_BIN_ENV`], or the newest
/// installed version's.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        return Some(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The `postgres` user's uid and gid if this process is root (PostgreSQL
/// will not run as root), else None: run as ourselves.
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns null or a pointer to a static record, read
    // at once (tests start clusters from one thread at a time: OnceLock).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, and there is no postgres user to run PostgreSQL as"
    );
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some((uid, gid))
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
}
