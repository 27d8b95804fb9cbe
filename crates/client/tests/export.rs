//! "Export all notes" on a real file system: hostile titles stay inside the
//! chosen folder, nothing is overwritten, cancel and progress, and the
//! errors of a missing or read-only folder.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use latchkey_client::{ExportReport, Note, export_notes};
use uuid::Uuid;

fn note(title: &str, body: &str, updated_at: i64) -> Note {
    Note {
        id: Uuid::new_v4(),
        title: title.into(),
        body: body.into(),
        rev: 1,
        updated_at,
        conflict_of: None,
        pending: false,
        version: 1,
    }
}

fn export(notes: &[Note], folder: &Path) -> latchkey_client::Result<ExportReport> {
    export_notes(notes, folder, |_, _| {}, &AtomicBool::new(false))
}

/// Every path under `root`, relative, without following links.
fn walk(root: &Path) -> BTreeSet<PathBuf> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                go(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    go(root, root, &mut out);
    out
}

/// The file names directly in `folder`.
fn names(folder: &Path) -> BTreeSet<String> {
    fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// `key: value` lines of a file's front matter, and the text after it.
fn front_matter(text: &str) -> (HashMap<String, String>, String) {
    let rest = text.strip_prefix("---\n").expect("front matter opens");
    let (head, tail) = rest.split_once("---\n").expect("front matter closes");
    let fields = head
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(": ").expect("key: value");
            (k.to_string(), v.to_string())
        })
        .collect();
    (fields, tail.to_string())
}

#[test]
fn hostile_titles_stay_in_the_folder() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("picked");
    fs::create_dir(&folder).unwrap();
    fs::write(root.path().join("beside.txt"), "untouched").unwrap();
    let before = walk(root.path());

    let long = "long title "
        .repeat(28)
        .chars()
        .take(300)
        .collect::<String>();
    let accents = "e\u{301}".repeat(200);
    let titles = [
        "../x",
        "..",
        ".",
        "/etc/passwd",
        "a\\b",
        "con",
        "CON.txt",
        "nul",
        long.as_str(),
        "🦀🎉",
        "",
        "   ",
        "Plan",
        "Plan",
        "plan",
        "Meeting: 10:00\nagenda \"draft\"",
        "C:\\Windows\\system32",
        "tab\there\u{0}nul",
        accents.as_str(),
    ];
    let mut notes: Vec<Note> = titles
        .iter()
        .enumerate()
        .map(|(i, t)| {
            note(
                t,
                &format!("body {i}\n---\nno: front matter\n"),
                1_700_000_000 - i as i64,
            )
        })
        .collect();
    let mut copy = note("Plan (conflict copy)", "theirs", 1_600_000_000);
    copy.conflict_of = Some(notes[12].id);
    notes.push(copy.clone());

    let report = export(&notes, &folder).unwrap();
    assert_eq!(
        report,
        ExportReport {
            folder: folder.clone(),
            written: notes.len(),
            total: notes.len(),
            cancelled: false,
        }
    );

    // Nothing appeared anywhere but files directly in the folder.
    let after = walk(root.path());
    let new: Vec<&PathBuf> = after.difference(&before).collect();
    assert_eq!(new.len(), notes.len(), "{new:#?}");
    for path in &new {
        assert_eq!(path.parent(), Some(Path::new("picked")), "{path:?}");
        assert!(
            fs::symlink_metadata(root.path().join(path))
                .unwrap()
                .is_file()
        );
    }
    assert!(before.is_subset(&after));
    assert_eq!(
        fs::read_to_string(root.path().join("beside.txt")).unwrap(),
        "untouched"
    );

    let names = names(&folder);
    let mut lower = BTreeSet::new();
    for name in &names {
        assert!(name.len() <= 255, "{name}");
        assert!(name.ends_with(".md"), "{name}");
        assert!(!name.starts_with('.') && !name.starts_with(' '), "{name}");
        assert!(
            !name.contains(|c: char| c.is_control() || "/\\:*?\"<>|".contains(c)),
            "{name:?}"
        );
        let base = name.split('.').next().unwrap().trim_end().to_uppercase();
        assert!(
            !["CON", "PRN", "AUX", "NUL", "COM1", "LPT1"].contains(&base.as_str()),
            "{name}"
        );
        assert!(lower.insert(name.to_lowercase()), "{name} twice");
    }
    for expected in [
        "Plan.md",
        "Plan (2).md",
        "plan (3).md",
        "Plan (conflict copy).md",
        "con_.md",
        "CON_.txt.md",
        "nul_.md",
        "_x.md",
        "_etc_passwd.md",
        "a_b.md",
        "🦀🎉.md",
        "Untitled.md",
        "Meeting_ 10_00 agenda _draft_.md",
    ] {
        assert!(names.contains(expected), "{expected} in {names:#?}");
    }
    // "..", ".", "" and "   " all have nothing usable.
    assert_eq!(
        names.iter().filter(|n| n.starts_with("Untitled")).count(),
        4
    );

    // Each note round-trips: one file per id, body intact.
    let mut by_id = HashMap::new();
    for name in &names {
        let text = fs::read_to_string(folder.join(name)).unwrap();
        let (fields, rest) = front_matter(&text);
        let id: Uuid = fields["id"].parse().unwrap();
        assert!(by_id.insert(id, (fields, rest)).is_none());
    }
    assert_eq!(by_id.len(), notes.len());
    for n in &notes {
        let (fields, rest) = &by_id[&n.id];
        assert!(rest.ends_with(&n.body), "{rest:?}");
        assert_eq!(fields["updated"].len(), "2023-11-14T22:13:20Z".len());
        assert_eq!(
            fields.get("conflict_of"),
            n.conflict_of.map(|u| u.to_string()).as_ref()
        );
        if !n.title.trim().is_empty() {
            assert!(rest.starts_with("\n# "), "{rest:?}");
        }
    }
    let (fields, rest) = &by_id[&notes[0].id];
    assert_eq!(fields["updated"], "2023-11-14T22:13:20Z");
    assert_eq!(rest, "\n# ../x\n\nbody 0\n---\nno: front matter\n");
    let (_, rest) = &by_id[&copy.id];
    assert_eq!(rest, "\n# Plan (conflict copy)\n\ntheirs");
}

#[test]
fn an_existing_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Plan.md"), "mine").unwrap();
    fs::write(dir.path().join("plan (2).md"), "mine too").unwrap();
    fs::create_dir(dir.path().join("Dir.md")).unwrap();
    let notes = [note("Plan", "exported", 2), note("Dir", "", 1)];

    let report = export(&notes, dir.path()).unwrap();
    assert_eq!(report.written, 2);
    assert_eq!(
        fs::read_to_string(dir.path().join("Plan.md")).unwrap(),
        "mine"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("plan (2).md")).unwrap(),
        "mine too"
    );
    assert!(
        fs::read_to_string(dir.path().join("Plan (3).md"))
            .unwrap()
            .ends_with("exported")
    );
    assert!(dir.path().join("Dir (2).md").is_file());

    // Exporting again adds a second set beside the first.
    export(&notes, dir.path()).unwrap();
    assert_eq!(
        names(dir.path()),
        [
            "Dir (2).md",
            "Dir (3).md",
            "Dir.md",
            "Plan (3).md",
            "Plan (4).md",
            "Plan.md",
            "plan (2).md"
        ]
        .map(String::from)
        .into()
    );
}

#[cfg(unix)]
#[test]
fn a_planted_link_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("out");
    fs::create_dir(&folder).unwrap();
    let target = dir.path().join("target.txt");
    fs::write(&target, "precious").unwrap();
    std::os::unix::fs::symlink(&target, folder.join("Plan.md")).unwrap();

    export(&[note("Plan", "x", 1)], &folder).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
    assert!(folder.join("Plan (2).md").is_file());
}

#[test]
fn cancel_stops_between_files() {
    let dir = tempfile::tempdir().unwrap();
    let notes: Vec<Note> = (0..20).map(|i| note(&format!("n{i}"), "b", i)).collect();
    let cancel = AtomicBool::new(false);
    let report = export_notes(
        &notes,
        dir.path(),
        |done, _| {
            if done == 7 {
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    )
    .unwrap();
    assert_eq!(
        (report.written, report.total, report.cancelled),
        (7, 20, true)
    );
    // Exactly 7 complete files, nothing else (no temporary file).
    let written = names(dir.path());
    assert_eq!(written.len(), 7, "{written:?}");
    // The newest first.
    for i in 13..20 {
        let text = fs::read_to_string(dir.path().join(format!("n{i}.md"))).unwrap();
        assert!(text.ends_with(&format!("# n{i}\n\nb")), "{text:?}");
    }

    // Cancelled before the start: nothing written.
    let empty = tempfile::tempdir().unwrap();
    let report = export_notes(&notes, empty.path(), |_, _| {}, &AtomicBool::new(true)).unwrap();
    assert_eq!((report.written, report.cancelled), (0, true));
    assert!(names(empty.path()).is_empty());
}

#[test]
fn progress_counts_up_to_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let notes: Vec<Note> = (0..5).map(|i| note("same", "b", i)).collect();
    let mut calls = Vec::new();
    export_notes(
        &notes,
        dir.path(),
        |done, total| calls.push((done, total)),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(calls, (0..=5).map(|d| (d, 5)).collect::<Vec<_>>());

    let mut calls = Vec::new();
    let report = export_notes(
        &[],
        dir.path(),
        |done, total| calls.push((done, total)),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(calls, [(0, 0)]);
    assert_eq!((report.written, report.cancelled), (0, false));
}

#[test]
fn a_missing_folder_or_a_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone");
    let err = export(&[note("a", "b", 1)], &missing).unwrap_err();
    assert_eq!(err.code(), "export");
    assert_eq!(
        err.to_string(),
        format!(
            "the notes could not be exported: the folder {} does not exist",
            missing.display()
        )
    );
    assert!(!missing.exists());

    let file = dir.path().join("file.txt");
    fs::write(&file, "x").unwrap();
    let err = export(&[note("a", "b", 1)], &file).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the notes could not be exported: {} is not a folder",
            file.display()
        )
    );
}

#[cfg(unix)]
#[test]
fn a_read_only_folder_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("ro");
    fs::create_dir(&folder).unwrap();
    fs::set_permissions(&folder, fs::Permissions::from_mode(0o555)).unwrap();
    // Root (or a file system without permissions) writes anyway; then
    // /sys, where nobody can create a file, if this is Linux.
    let folder = if fs::write(folder.join("probe"), "").is_err() {
        folder
    } else if fs::write("/sys/latchkey-probe", "")
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    {
        PathBuf::from("/sys")
    } else {
        eprintln!("skipped: this user can write into a read-only folder");
        return;
    };
    let before = names(&folder);
    let err = export(&[note("a", "b", 1)], &folder).unwrap_err();
    assert_eq!(err.code(), "export");
    assert_eq!(
        err.to_string(),
        format!(
            "the notes could not be exported: the folder {} cannot be written (read-only, or not yours)",
            folder.display()
        )
    );
    assert_eq!(names(&folder), before);
}
