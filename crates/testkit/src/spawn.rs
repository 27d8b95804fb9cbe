//! Starting a server process and waiting until it listens: [`Spawn`] runs
//! a program whose log (stderr) says `listening on <URL>` once it accepts
//! connections, and hands back a [`ServerProcess`] that knows that URL.
//! The program is usually `latchkey-server serve` ([`Spawn::serve`]), but
//! any other that logs the same line will do (a benchmark's baseline).

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a server may take to start on a busy machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start, and how: see [`Spawn::serve`] and [`Spawn::program`].
#[derive(Debug, Clone)]
pub struct Spawn {
    /// None: [`crate::server_bin`], built when first needed.
    program: Option<PathBuf>,
    /// `serve --addr <addr> --db <db>`, for the server binary.
    serve: Option<(String, PathBuf)>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log_file: Option<PathBuf>,
    keep_stdin: bool,
}

impl Spawn {
    /// `latchkey-server serve --addr 127.0.0.1:0 --db <db>` (the binary of
    /// [`crate::server_bin`]), logging at `info`, with no `LATCHKEY_*`
    /// variable of the caller's environment.
    pub fn serve(db: impl Into<PathBuf>) -> Self {
        Self {
            program: None,
            serve: Some(("127.0.0.1:0".into(), db.into())),
            args: Vec::new(),
            env: vec![("LATCHKEY_LOG".into(), "info".into())],
            log_file: None,
            keep_stdin: false,
        }
    }

    /// Any program that logs `listening on <URL>` on stderr, with no
    /// `LATCHKEY_*` variable of the caller's environment.
    pub fn program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: Some(program.into()),
            serve: None,
            ..Self::serve("")
        }
    }

    /// Runs this binary instead (a crate's own tests pass the one cargo
    /// built for them, `env!("CARGO_BIN_EXE_latchkey-server")`).
    pub fn bin(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Listens on `addr` (default `127.0.0.1:0`: a free port, learnt from
    /// the log). Only with [`Spawn::serve`].
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        if let Some(serve) = &mut self.serve {
            serve.0 = addr.into();
        }
        self
    }

    /// More arguments (after `serve --addr --db`).
    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable (`LATCHKEY_LOG` overrides the `info` default).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Every `(key, value)` of `vars`.
    pub fn envs<K: Into<OsString>, V: Into<OsString>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The log goes to this file instead of memory (a benchmark, so that
    /// nothing in the measuring process reads it meanwhile).
    pub fn log_to(mut self, file: impl Into<PathBuf>) -> Self {
        self.log_file = Some(file.into());
        self
    }

    /// Gives the child a stdin pipe, open until the [`ServerProcess`] is
    /// dropped (for a child that exits when it closes).
    pub fn keep_stdin(mut self) -> Self {
        self.keep_stdin = true;
        self
    }

    /// The command this runs.
    pub fn command(&self) -> Command {
        let program = self.program.clone().unwrap_or_else(crate::server_bin);
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LATCHKEY_") {
                cmd.env_remove(k);
            }
        }
        if let Some((addr, db)) = &self.serve {
            cmd.args(["serve", "--addr", addr, "--db"]).arg(db);
        }
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the process and waits until it listens.
    ///
    /// # Panics
    /// If it does not within [`START_TIMEOUT`]; [`Spawn::try_start`]
    /// returns that failure instead.
    pub fn start(&self) -> ServerProcess {
        self.try_start()
            .unwrap_or_else(|e| panic!("the server did not start: {e}"))
    }

    /// Starts the process and waits until it listens, or returns why it
    /// did not (its exit status and what it said).
    pub fn try_start(&self) -> Result<ServerProcess, String> {
        let mut cmd = self.command();
        cmd.stdin(if self.keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let (stderr, stdout) = (Arc::new(Mutex::new(String::new())), Arc::default());
        let mut child;
        let found = match &self.log_file {
            Some(file) => {
                let log = std::fs::File::create(file).map_err(|e| format!("{file:?}: {e}"))?;
                cmd.stdout(Stdio::null()).stderr(log);
                child = cmd
                    .spawn()
                    .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
                watch_file(&mut child, file)
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
                child = cmd
                    .spawn()
                    .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
                let (tx, rx) = mpsc::channel();
                pump(child.stderr.take(), stderr.clone(), Some(tx));
                pump(child.stdout.take(), Arc::clone(&stdout), None);
                rx.recv_timeout(START_TIMEOUT)
                    .map_err(|_| "no `listening on` line".to_string())
            }
        };
        let url = match found {
            Ok(url) => url,
            Err(why) => {
                let _ = child.kill();
                let status = child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                // Let the pump finish copying what the process said.
                std::thread::sleep(Duration::from_millis(100));
                let said = match &self.log_file {
                    Some(file) => std::fs::read_to_string(file).unwrap_or_default(),
                    None => stderr.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                };
                return Err(format!("{why} ({status}): {said}"));
            }
        };
        let addr: SocketAddr = url
            .split("://")
            .nth(1)
            .and_then(|a| a.trim_end_matches('/').parse().ok())
            .ok_or_else(|| format!("not a URL with an address: {url}"))?;
        Ok(ServerProcess {
            child,
            url,
            addr,
            stderr,
            stdout,
        })
    }
}

/// The URL in a "... listening on http://127.0.0.1:PORT ..." log line.
fn listening_url(line: &str) -> Option<String> {
    let rest = line.split("listening on ").nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// Copies a child's stream into `buf`, line by line, telling `found` of
/// the first `listening on` URL.
fn pump(
    stream: Option<impl std::io::Read + Send + 'static>,
    buf: Arc<Mutex<String>>,
    mut found: Option<mpsc::Sender<String>>,
) {
    let Some(stream) = stream else { return };
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            buf.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&line);
            if let Some(url) = found.as_ref().and_then(|_| listening_url(&line)) {
                let _ = found.take().map(|tx| tx.send(url));
            }
        }
    });
}

/// Polls the log file for the `listening on` URL.
fn watch_file(child: &mut Child, file: &Path) -> Result<String, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(url) = text.lines().find_map(listening_url) {
            return Ok(url);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}) before listening"));
        }
        if Instant::now() > deadline {
            return Err("no `listening on` line".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running server process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    url: String,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Where it listens: `http://127.0.0.1:PORT` (or `https://`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far (empty with [`Spawn::log_to`]).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What it printed so far (empty with [`Spawn::log_to`]).
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends `signal` (`libc::SIGTERM`, `libc::SIGSTOP`, ...).
    pub fn signal(&self, signal: i32) {
        signal_pid(self.pid(), signal);
    }

    /// SIGTERM, and waits (at most 15 s) for the exit.
    ///
    /// # Panics
    /// If it has not exited by then.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and waits: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` to the process `pid`.
pub fn signal_pid(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory effects; at worst the pid is gone.
        unsafe { libc::kill(pid, signal) };
    }
}
