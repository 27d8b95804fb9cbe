//! Local faults on the client: the data folder's disk full, the data folder
//! read-only. A save must fail with a sentence the UI can show, and nothing
//! already saved may be damaged or lost; once the fault is gone, saving and
//! syncing work again. The data folder lives on a small tmpfs of the test's
//! own (mounting needs root, as in CI; the test says so if it cannot).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use latchkey_client::{Engine, Note, SystemClock};
use latchkey_testkit::*;

/// A tmpfs mounted on a temporary folder, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::run(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ],
            dir.path(),
        );
        Self { dir }
    }

    fn run(args: &[&str], at: &Path) {
        let out = Command::new("mount").args(args).arg(at).output().unwrap();
        assert!(
            out.status.success(),
            "mount {args:?} failed (these tests need root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts read-only or read-write. A dropped engine's last tasks may
    /// hold the database open for a moment ("busy"): retried for a while.
    fn remount(&self, mode: &str) {
        let opts = format!("remount,{mode}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let out = Command::new("mount")
                .args(["-o", &opts])
                .arg(self.path())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                return;
            }
            assert!(
                err.contains("busy") && std::time::Instant::now() < deadline,
                "mount -o {opts} failed: {err}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

async fn signed_in(server: &TestServer, user: &str, data: &Path) -> Engine {
    server.add_user(user, "pw-local-123");
    let e = Engine::start(
        test_config(data),
        Arc::new(MemoryVault::new()),
        Arc::new(TestHttp::new()),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    e.sign_in(&server.url(), user, "pw-local-123")
        .await
        .unwrap();
    e
}

fn texts(notes: &[Note]) -> Vec<(String, String)> {
    let mut v: Vec<_> = notes
        .iter()
        .map(|n| (n.title.clone(), n.body.clone()))
        .collect();
    v.sort();
    v
}

/// `PRAGMA integrity_check` of every notes database under `dir`.
fn integrity(dir: &Path) {
    let mut dbs: Vec<PathBuf> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "notes.db") {
                dbs.push(p);
            }
        }
    }
    assert!(!dbs.is_empty());
    for db in dbs {
        let c = rusqlite::Connection::open(&db).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{db:?}");
    }
}

/// Once the fault is gone: a sync sends everything, the server holds
/// exactly `expected` (title, body, sorted), and the database is sound.
async fn synced_once_writable(
    e: Engine,
    server: &TestServer,
    user: &str,
    data: &Path,
    expected: &[(String, String)],
) {
    e.set_work_offline(false);
    e.sync_now().await.unwrap();
    assert_eq!(e.status().pending, 0);
    let mut on_server: Vec<_> = server_notes(&server.url(), user, "pw-local-123")
        .await
        .into_iter()
        .map(|(t, b, _)| (t, b))
        .collect();
    on_server.sort();
    assert_eq!(on_server, expected);
    drop(e);
    integrity(data);
}

/// Checks a refused save: the storage error, in words a user can act on.
fn assert_refused(err: latchkey_client::Error, words: &str) {
    assert_eq!(err.code(), "storage", "{err}");
    let text = err.to_string();
    assert!(text.contains(words), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_save_clearly_and_damages_nothing() {
    let server = TestServer::start(&[]);
    let fs = Tmpfs::mount("4m");
    let data = fs.path().join("data");
    let e = signed_in(&server, "full-disk", &data).await;
    e.set_work_offline(true);
    for i in 0..5 {
        e.save_note(
            None,
            None,
            format!("kept {i}"),
            format!("saved before the disk filled {i}"),
        )
        .await
        .unwrap();
    }
    // Fill the disk.
    let filler = fs.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Saves now fail (the first few may still fit in free pages of the
    // database or its log): each either returns and is kept, or fails
    // with a clear error and leaves nothing half-written.
    let mut kept = texts(&e.list_notes().await.unwrap());
    let body = "x".repeat(64 * 1024);
    let mut refused = None;
    for i in 0..200 {
        let title = format!("while full {i}");
        match e.save_note(None, None, title.clone(), body.clone()).await {
            Ok(_) => kept.push((title, body.clone())),
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    assert_refused(
        refused.expect("a save on a full disk must fail"),
        "disk is full",
    );
    kept.sort();
    assert_eq!(texts(&e.list_notes().await.unwrap()), kept);
    assert_eq!(e.status().pending, kept.len() as u64);

    // Space again: everything saved is intact, saving and syncing work.
    std::fs::remove_file(&filler).unwrap();
    e.save_note(None, None, "after".into(), "space again".into())
        .await
        .unwrap();
    kept.push(("after".into(), "space again".into()));
    kept.sort();
    assert_eq!(texts(&e.list_notes().await.unwrap()), kept);
    synced_once_writable(e, &server, "full-disk", &data, &kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_folder_is_a_clear_error_and_damages_nothing() {
    // Open files stay writable when a folder's mode changes, so a read-only
    // folder shows at the next start: the app starts with it read-only.
    let server = TestServer::start(&[]);
    let fs = Tmpfs::mount("16m");
    let data = fs.path().join("data");
    let vault = MemoryVault::new();
    let start = || async {
        Engine::start(
            test_config(&data),
            Arc::new(vault.clone()),
            Arc::new(TestHttp::new()),
            Arc::new(SystemClock),
        )
        .await
        .unwrap()
    };
    server.add_user("read-only", "pw-local-123");
    let e = start().await;
    e.sign_in(&server.url(), "read-only", "pw-local-123")
        .await
        .unwrap();
    e.save_note(None, None, "synced".into(), "saved and synced".into())
        .await
        .unwrap();
    e.sync_now().await.unwrap();
    e.set_work_offline(true);
    e.save_note(None, None, "unsynced".into(), "queued before".into())
        .await
        .unwrap();
    let before = texts(&e.list_notes().await.unwrap());
    drop(e);

    fs.remount("ro");
    let e = start().await;
    let st = e.status();
    let err = match e
        .save_note(None, None, "new".into(), "cannot be saved".into())
        .await
    {
        Err(err) => err,
        Ok(_) => panic!("a save into a read-only folder must fail"),
    };
    if st.user.is_some() {
        assert_refused(err, "read-only");
    } else {
        // Signed in, but the notes cannot be opened: said so, at once.
        let shown = st.last_error.expect("the reason is shown");
        assert_eq!(shown.code, "storage", "{shown:?}");
        assert!(shown.message.contains("read-only"), "{shown:?}");
    }
    drop(e);

    fs.remount("rw");
    let e = start().await;
    assert!(e.status().user.is_some(), "{:?}", e.status());
    assert_eq!(texts(&e.list_notes().await.unwrap()), before);
    synced_once_writable(e, &server, "read-only", &data, &before).await;
}
