//! nginx (Debian's `nginx-light`, installed by `scripts/setup.sh`) as the
//! load balancer in front of server instances: round robin, with the
//! project's own `deploy/nginx/latchkey-locations.conf` included, so the
//! tests exercise the configuration that ships. Its own prefix, config,
//! temp folders and port on 127.0.0.1; stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The locations file the deploy example and the tests share.
pub fn locations_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx/latchkey-locations.conf")
}

/// A running nginx.
pub struct Nginx {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Nginx {
    /// Starts nginx on `port` (a free one: pick it first, so that the
    /// servers behind can be given `--issuer` with it) in front of the
    /// servers listening on `upstreams` (127.0.0.1), and waits until it
    /// accepts connections.
    ///
    /// # Panics
    /// If nginx is missing (run `scripts/setup.sh`) or does not start.
    pub fn start(port: u16, upstreams: &[u16]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let d = dir.path().display();
        // Workers run as the user starting nginx (root in CI), so that
        // they can write the temp folders of this private prefix.
        let user = if is_root() { "user root;" } else { "" };
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let conf = format!(
            "{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream latchkey {{
{servers}        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        include {};
    }}
}}
",
            locations_conf().display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(nginx_bin())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts (is it installed? run scripts/setup.sh)");
        let mut nginx = Nginx { port, dir, child };
        nginx.wait_listening();
        nginx
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What nginx logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("nginx exited ({status}): {err}{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, nginx's fast shutdown: the master tells its workers,
        // they close every connection at once (SIGQUIT would wait for open
        // streams), and the master exits after them. SIGKILL would leave
        // the workers running, still listening on the port, answering 502
        // for upstreams that are gone, and keeping a new nginx from it.
        crate::spawn::signal_pid(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    "nginx".into()
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
