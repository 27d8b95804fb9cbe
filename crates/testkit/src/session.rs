//! Running this executable again in a desktop session of its own: a
//! private D-Bus session (`dbus-run-session`) with a gnome-keyring Secret
//! Service, fresh XDG folders, and, for a window, a virtual display (Xvfb).
//! The keychain and end-to-end tests run their inner tests this way (each
//! an `#[ignore]`d test of the same binary); the engine bench its keyring run.

use std::ffi::OsString;
use std::process::{Command, Output};

/// The Secret Service of the session.
#[derive(Debug, Clone, Copy)]
pub enum Keyring {
    /// gnome-keyring, its login keyring created and unlocked with this
    /// password.
    Unlocked(&'static str),
    /// gnome-keyring started with no keyring unlocked (none made yet).
    Locked,
    /// No Secret Service at all.
    Absent,
}

/// A desktop session to run this executable in.
#[derive(Debug, Clone)]
pub struct DesktopSession {
    keyring: Keyring,
    xvfb: bool,
    bus_args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl DesktopSession {
    /// A D-Bus session with `keyring`, and no display.
    pub fn new(keyring: Keyring) -> Self {
        Self {
            keyring,
            xvfb: false,
            bus_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Adds a virtual display (1280x800) for a window; the whole run is
    /// killed after 7 minutes, so that a hung window fails its test, not
    /// the whole run.
    pub fn with_display(mut self) -> Self {
        self.xvfb = true;
        self
    }

    /// More arguments for `dbus-run-session` (`--config-file=...`).
    pub fn bus_args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.bus_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable of the run.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The command that runs this executable with `args` in the session,
    /// and the folder its XDG folders are in (removed when dropped: keep
    /// it until the command is done).
    pub fn command<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> (Command, tempfile::TempDir) {
        let home = tempfile::tempdir().expect("a temporary directory");
        let unlock = match self.keyring {
            Keyring::Unlocked(password) => format!(
                "eval \"$(printf %s {password} | gnome-keyring-daemon --unlock --components=secrets)\" >/dev/null; "
            ),
            Keyring::Locked => {
                "eval \"$(gnome-keyring-daemon --start --components=secrets)\" >/dev/null; ".into()
            }
            Keyring::Absent => String::new(),
        };
        let script = format!("{unlock}exec \"$0\" \"$@\"");
        let mut cmd = if self.xvfb {
            let mut cmd = Command::new("timeout");
            // xvfb-run's `-s` takes the X server's arguments as one.
            let screen = "-screen 0 1280x800x24 -nolisten tcp";
            cmd.args(["-k", "10", "420", "xvfb-run", "-a", "-s", screen])
                .arg("dbus-run-session");
            cmd
        } else {
            Command::new("dbus-run-session")
        };
        cmd.args(&self.bus_args)
            .args(["--", "sh", "-c", &script])
            .arg(std::env::current_exe().expect("the path of this executable"))
            .args(args)
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_CACHE_HOME", home.path().join("cache"))
            .env("XDG_RUNTIME_DIR", home.path())
            .env_remove("DISPLAY");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        (cmd, home)
    }

    /// Runs the test `inner` of this binary (`#[ignore]`d, so it only ever
    /// runs here) in the session, prints what it printed, and returns its
    /// output.
    ///
    /// # Panics
    /// Unless it ran and passed.
    pub fn run_test(&self, inner: &str) -> Output {
        let (mut cmd, _home) = self.command([
            "--exact",
            inner,
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ]);
        let out = cmd
            .output()
            .expect("dbus-run-session and xvfb-run (scripts/setup.sh installs them)");
        let text = String::from_utf8_lossy(&out.stdout);
        // what the inner test printed (timings), shown with --nocapture
        print!("{text}");
        assert!(
            out.status.success() && text.contains("1 passed"),
            "inner test {inner} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}
