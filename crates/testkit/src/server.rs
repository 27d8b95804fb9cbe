//! The `latchkey-server` binary as the tests and benches run it: built once
//! per test binary ([`server_bin`]), its command line run to completion
//! ([`run_cli`], [`add_user`]), and [`TestServer`], a server on a port and
//! database of its own that can be stopped, killed and restarted in place:
//! one process on SQLite, or, with `LATCHKEY_TEST_SERVERS=N`
//! ([`TEST_SERVERS_ENV`]), N instances on PostgreSQL behind nginx.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use crate::nginx::Nginx;
use crate::postgres::PgCluster;
use crate::spawn::{ServerProcess, Spawn};

/// Names a server binary to use instead of building one.
pub const SERVER_BIN_ENV: &str = "LATCHKEY_SERVER_BIN";

/// The server binary: [`SERVER_BIN_ENV`] if set, else built (a no-op when
/// up to date) once per test binary, in the target dir and profile the
/// running test or bench was built in. A crate's own tests can use
/// `env!("CARGO_BIN_EXE_latchkey-server")` instead, which cargo builds.
///
/// # Panics
/// If the build fails.
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os(SERVER_BIN_ENV) {
            return bin.into();
        }
        let exe = std::env::current_exe().expect("the path of this test");
        // target/<profile>/deps/<test> -> target/<profile>/latchkey-server
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test runs from target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("a target dir");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "--locked", "--target-dir"]);
        build.arg(target_dir);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            // The features `cargo test --workspace` resolves, so that after
            // it this build is a no-op: the whole workspace selected, and an
            // example (any) so that dev-dependencies count too. Built for
            // the server alone, cargo leaves dev-dependencies out (fantoccini
            // turns on syn's `fold`, for one) and builds a second copy of
            // the server's dependencies. scripts/run.sh builds the same way.
            Some("debug") => {
                build.args([
                    "--workspace",
                    "--bin",
                    "latchkey-server",
                    "--example",
                    "bench_seed",
                ]);
            }
            // A test or bench built with --release (or another profile)
            // runs that profile's server. These runs are one crate's
            // (`cargo test -p latchkey-client --release`, `cargo bench`),
            // whose features match no workspace build: the server alone is
            // the least to build.
            Some(profile) => {
                build.args(["-p", "latchkey-server", "--bin", "latchkey-server"]);
                build.args(["--profile", profile]);
            }
            None => panic!("no profile dir above {}", exe.display()),
        }
        for (name, _) in std::env::vars_os() {
            if is_set_by_cargo_for_tests(&name) {
                build.env_remove(name);
            }
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building latchkey-server failed");
        profile_dir.join("latchkey-server")
    })
    .clone()
}

/// The variables cargo sets for the test it runs (its package's name,
/// folder, version, ...). A nested `cargo build` must not see them: build
/// scripts such as ring's ask to rerun when `CARGO_MANIFEST_DIR` or
/// `CARGO_PKG_NAME` change, so the build would redo ring, rustls, reqwest
/// and the workspace, and the next `cargo` run from a shell (scripts/run.sh
/// after scripts/test.sh) would redo them all again.
fn is_set_by_cargo_for_tests(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    name == "OUT_DIR"
        || name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// Runs `bin` with `args` to completion (killed after 30 s), `stdin` fed
/// in, with no `LATCHKEY_*` variable of the caller's environment but
/// `LATCHKEY_LOG=info` and `env`.
///
/// # Panics
/// If it cannot start, or runs past 30 s.
pub fn run_cli(bin: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Spawn::program(bin)
        .args(args)
        .envs(env.iter().copied())
        .command();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start latchkey-server");
    let mut input = child.stdin.take().expect("a stdin pipe");
    if let Some(s) = stdin {
        let _ = input.write_all(s.as_bytes());
    }
    drop(input);
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        // Our own child, not reaped yet: its waiter is still blocked on it.
        crate::spawn::signal_pid(pid, libc::SIGKILL);
        panic!("latchkey-server {args:?} did not finish within 30 s");
    }
    waiter
        .join()
        .expect("the waiter thread")
        .expect("the output of latchkey-server")
}

/// `latchkey-server user add` of `name` with `password`, on `db`.
///
/// # Panics
/// If it fails.
pub fn add_user(bin: &Path, db: &Path, name: &str, password: &str) {
    let db = db.to_str().expect("a UTF-8 path");
    let out = run_cli(
        bin,
        &[
            "user",
            "add",
            "--username",
            name,
            "--password-stdin",
            "--db",
            db,
        ],
        Some(&format!("{password}\n")),
        &[],
    );
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Names how many server instances a [`TestServer`] is: unset (or `1`),
/// one process on a SQLite file; `N` (2 or more), N instances on one
/// PostgreSQL database of the kit's private cluster, behind nginx running
/// the shipped config (round robin), each with `--issuer` set to nginx's
/// URL and `--trusted-proxy 127.0.0.1` (DESIGN.md "Growing past one
/// machine"). `LATCHKEY_TEST_SERVERS=3 cargo test -p latchkey-client
/// --test engine` runs the engine's tests through such a cluster.
pub const TEST_SERVERS_ENV: &str = "LATCHKEY_TEST_SERVERS";

/// How many instances this run's [`TestServer`]s are (see
/// [`TEST_SERVERS_ENV`]).
///
/// # Panics
/// On a value that is not a positive number.
pub fn test_servers() -> usize {
    match std::env::var(TEST_SERVERS_ENV).as_deref() {
        Err(_) | Ok("") => 1,
        Ok(n) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("{TEST_SERVERS_ENV}={n:?}: say a number of instances, 1 or more"),
        },
    }
}

/// Whether this run's [`TestServer`]s are several instances behind nginx.
pub fn in_cluster() -> bool {
    test_servers() > 1
}

/// True, saying why, if this run's [`TestServer`]s are several instances
/// behind nginx: for a test that only makes sense with one server process
/// on a SQLite file (its pid, its memory, the file itself) to return early.
pub fn skip_in_cluster(why: &str) -> bool {
    let skip = in_cluster();
    if skip {
        println!("skipped with {TEST_SERVERS_ENV}={}: {why}", test_servers());
    }
    skip
}

/// `instances` server processes as `spawn` makes them, each told
/// `--issuer` nginx's URL and `--trusted-proxy 127.0.0.1`, and nginx on
/// `port` in front of them (round robin, the shipped locations), as
/// DESIGN.md "Growing past one machine" runs them. Started one after
/// another: the first runs the migrations, the others find them done.
///
/// # Panics
/// If an instance or nginx does not start.
pub fn behind_nginx(
    port: u16,
    instances: usize,
    spawn: impl Fn() -> Spawn,
) -> (Vec<ServerProcess>, Nginx) {
    let issuer = format!("http://127.0.0.1:{port}");
    let processes: Vec<ServerProcess> = (0..instances)
        .map(|_| {
            spawn()
                .args(["--issuer", &issuer, "--trusted-proxy", "127.0.0.1"])
                .start()
        })
        .collect();
    let ports: Vec<u16> = processes.iter().map(ServerProcess::port).collect();
    let nginx = Nginx::start(port, &ports);
    (processes, nginx)
}

/// Several instances on one PostgreSQL database, and nginx in front.
struct Cluster {
    /// The database, as `--db` takes it.
    db: String,
    instances: usize,
    nginx: Option<Nginx>,
}

/// A real server on a port and database of its own; the port stays the
/// same across [`TestServer::restart`]. Killed when dropped.
///
/// By default one process on a SQLite file. With [`TEST_SERVERS_ENV`] set
/// to 2 or more, that many instances on one PostgreSQL database, with nginx
/// listening on [`TestServer::port`]: [`TestServer::url`] is nginx's, and
/// [`TestServer::stop`], [`TestServer::kill`] and [`TestServer::restart`]
/// act on nginx and every instance (a stopped server refuses connections,
/// as one process does, rather than nginx answering 502).
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The extra `serve` flags it starts with.
    pub extra: Vec<String>,
    processes: Vec<ServerProcess>,
    cluster: Option<Cluster>,
}

impl TestServer {
    /// Starts `serve` with `extra` flags on a free port and a new database
    /// (several instances and nginx with [`TEST_SERVERS_ENV`]).
    pub fn start(extra: &[&str]) -> Self {
        let instances = test_servers();
        let cluster = (instances > 1).then(|| Cluster {
            db: PgCluster::shared().database(),
            instances,
            nginx: None,
        });
        let mut s = TestServer {
            dir: tempfile::tempdir().expect("a temporary directory"),
            port: crate::free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            processes: Vec::new(),
            cluster,
        };
        s.restart();
        s
    }

    /// The SQLite file of a one-process server. With several instances
    /// there is none (the store is PostgreSQL, see [`TestServer::db_arg`]):
    /// a test reading the file skips with [`skip_in_cluster`].
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("server.db")
    }

    /// The database as `--db` takes it: the SQLite file, or the
    /// PostgreSQL URL of a cluster.
    pub fn db_arg(&self) -> String {
        match &self.cluster {
            Some(c) => c.db.clone(),
            None => self.db().to_str().expect("a UTF-8 path").to_owned(),
        }
    }

    /// The PostgreSQL URL, when several instances share a database.
    pub fn postgres_url(&self) -> Option<&str> {
        self.cluster.as_ref().map(|c| c.db.as_str())
    }

    /// How many server processes this is.
    pub fn instances(&self) -> usize {
        self.cluster.as_ref().map_or(1, |c| c.instances)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process(es) (again) and waits until they listen (and
    /// nginx, in front of several).
    pub fn restart(&mut self) {
        assert!(self.processes.is_empty(), "already running");
        let log = "warn,latchkey_server::server=info";
        let Some(cluster) = &mut self.cluster else {
            let process = Spawn::serve(self.db())
                .addr(format!("127.0.0.1:{}", self.port))
                .args(&self.extra)
                // The start-up line stays, the per-request lines go:
                // nothing reads them, and the server does as little as it
                // can.
                .env("LATCHKEY_LOG", log)
                .start();
            self.processes.push(process);
            return;
        };
        let (processes, nginx) = behind_nginx(self.port, cluster.instances, || {
            Spawn::serve(&cluster.db)
                .args(&self.extra)
                .env("LATCHKEY_LOG", log)
        });
        self.processes = processes;
        cluster.nginx = Some(nginx);
    }

    /// Where each server process listens: [`TestServer::url`] for one
    /// process, each instance's own URL (not nginx's) for several.
    pub fn instance_urls(&self) -> Vec<String> {
        match &self.cluster {
            None => vec![self.url()],
            Some(_) => self.processes.iter().map(|p| p.url().to_owned()).collect(),
        }
    }

    /// The one server process's pid.
    ///
    /// # Panics
    /// If not running, or several instances run (see [`TestServer::pids`]).
    pub fn pid(&self) -> u32 {
        assert!(
            self.cluster.is_none(),
            "pid() of {} instances: use pids(), or skip_in_cluster",
            self.instances()
        );
        self.processes.first().expect("running").pid()
    }

    /// Every server process's pid (nginx's not among them).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(ServerProcess::pid).collect()
    }

    /// SIGTERM, and wait (nginx first: nothing is let in meanwhile).
    pub fn stop(&mut self) {
        self.stop_nginx();
        for mut p in self.processes.drain(..) {
            p.terminate();
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        self.stop_nginx();
        for mut p in self.processes.drain(..) {
            p.kill();
        }
    }

    fn stop_nginx(&mut self) {
        if let Some(c) = &mut self.cluster {
            c.nginx = None;
        }
    }

    /// What nginx logged (warnings and errors), in front of several
    /// instances.
    pub fn nginx_log(&self) -> Option<String> {
        let nginx = self.cluster.as_ref()?.nginx.as_ref()?;
        Some(nginx.log())
    }

    /// Runs a subcommand on this server's database.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let db = self.db_arg();
        let mut all = args.to_vec();
        all.extend(["--db", &db]);
        run_cli(&server_bin(), &all, stdin, &[])
    }

    pub fn add_user(&self, name: &str, password: &str) {
        add_user(&server_bin(), Path::new(&self.db_arg()), name, password);
    }

    /// Revokes every session of `name` with the CLI.
    pub fn revoke_user(&self, name: &str) {
        let out = self.cli(&["session", "revoke", "--username", name], None);
        assert!(
            out.status.success(),
            "session revoke: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestServer {
    /// nginx first, so that nothing reaches an instance being killed.
    fn drop(&mut self) {
        self.stop_nginx();
    }
}
