//! "Export all notes": one Markdown file per note, written into a folder the
//! user picked, with names that are safe on every OS and never overwrite a
//! file already there.
//!
//! Each file is a short YAML front matter (`id`, `updated`, and
//! `conflict_of` for a conflict copy), then the title as a `# ` heading when
//! there is one, then the body as it is. The file's modification time is the
//! note's `updated_at` where the file system allows it.
//!
//! Plain blocking file I/O: the app runs [`export_notes`] off its async
//! runtime (`spawn_blocking`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use latchkey_protocol::sync::CONFLICT_COPY_SUFFIX;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::Note;

/// The longest file name stem (before ` (2)` and `.md`), in bytes: well
/// under the 255-byte name limit of common file systems, with room to
/// spare for paths near Windows' 260-character limit.
pub const MAX_STEM_BYTES: usize = 120;

/// The stem of a note whose title leaves nothing usable.
const UNTITLED: &str = "Untitled";

/// What an export did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// The folder the files were written into.
    pub folder: PathBuf,
    /// Files written (one per note).
    pub written: usize,
    /// Notes asked for.
    pub total: usize,
    /// Stopped by the cancel flag before every note was written.
    pub cancelled: bool,
}

/// Writes one `.md` file per note directly into `folder`, newest note
/// first (by `updated_at`, then id: the order decides which of two notes
/// with the same title gets the plain name and which gets ` (2)`).
///
/// `progress(done, total)` is called once before the first file with
/// `done == 0`, then after every file, up to `(total, total)`. `cancel` is
/// read before each file: a cancelled export stops there, keeps the files
/// already written, and returns a report with `cancelled` set and the
/// number written. No file is ever left half-written by a cancel or an
/// error: a file whose write fails is removed before the error returns.
///
/// Names come from the titles, made safe on Windows, macOS and Linux (see
/// [`file_stem`]), and unique within the export case-insensitively
/// (`Plan.md`, `Plan (2).md`, `plan (3).md`), also against the files
/// already in the folder, which are never overwritten: their names are
/// skipped for the next number.
///
/// Errors are [`Error::Export`], a sentence saying what went wrong (the
/// folder is missing, is not a folder, cannot be written, the disk is
/// full) and how many files were written before it.
pub fn export_notes<'a, I, P>(
    notes: I,
    folder: &Path,
    mut progress: P,
    cancel: &AtomicBool,
) -> Result<ExportReport>
where
    I: IntoIterator<Item = &'a Note>,
    P: FnMut(usize, usize),
{
    let mut notes: Vec<&Note> = notes.into_iter().collect();
    notes.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.id.cmp(&b.id)));
    let total = notes.len();
    match fs::metadata(folder) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::Export(format!(
                "{} is not a folder",
                folder.display()
            )));
        }
        Err(e) => return Err(Error::Export(io_detail(&e, folder, None, 0, total))),
    }

    let mut names = Names::of_folder(folder);
    let mut content = String::new();
    let mut written = 0;
    let mut cancelled = false;
    progress(0, total);
    for note in notes {
        if cancel.load(Ordering::Relaxed) {
            cancelled = true;
            break;
        }
        let stem = file_stem(&note.title, note.conflict_of.is_some());
        let (path, file) = names.create(folder, &stem, written, total)?;
        render(note, &mut content);
        if let Err((e, removed)) = fill(file, &path, &content, note.updated_at) {
            let mut detail = io_detail(&e, folder, Some(&path), written, total);
            if !removed {
                let _ = write!(
                    detail,
                    "; the incomplete file {} could not be removed",
                    path.display()
                );
            }
            return Err(Error::Export(detail));
        }
        written += 1;
        progress(written, total);
    }
    Ok(ExportReport {
        folder: folder.to_path_buf(),
        written,
        total,
        cancelled,
    })
}

/// Writes `content` into the new file at `path`, or removes the file: a
/// note is never left half-written. On failure, the write's error and
/// whether the removal worked.
fn fill(file: File, path: &Path, content: &str, updated_at: i64) -> Result<(), (io::Error, bool)> {
    write_file(file, content, updated_at).map_err(|e| (e, fs::remove_file(path).is_ok()))
}

fn write_file(mut file: File, content: &str, updated_at: i64) -> io::Result<()> {
    file.write_all(content.as_bytes())?;
    if let Ok(secs) = u64::try_from(updated_at) {
        // Best effort: some file systems (network shares, FAT on some
        // hosts) refuse it, and the date is in the front matter anyway.
        if let Err(e) = file.set_modified(UNIX_EPOCH + Duration::from_secs(secs)) {
            tracing::debug!("export: cannot set a file's modification time: {e}");
        }
    }
    Ok(())
}

/// The names taken in the folder (lowercased), and the next number to try
/// per stem so that many notes with one title stay linear.
struct Names {
    taken: HashSet<String>,
    next: HashMap<String, u64>,
}

impl Names {
    /// Starts with the names already in `folder`, so that a new name
    /// differs from them case-insensitively too (the folder may be copied
    /// to a case-insensitive file system). Best effort: `create_new` is
    /// what guarantees that nothing is overwritten.
    fn of_folder(folder: &Path) -> Self {
        let taken = fs::read_dir(folder)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_lowercase())
            .collect();
        Self {
            taken,
            next: HashMap::new(),
        }
    }

    /// Creates the first free `stem.md`, `stem (2).md`, ... with
    /// `create_new`, so that an existing file is never opened.
    fn create(
        &mut self,
        folder: &Path,
        stem: &str,
        written: usize,
        total: usize,
    ) -> Result<(PathBuf, File)> {
        let key = stem.to_lowercase();
        let first = self.next.get(&key).copied().unwrap_or(1);
        // Only a file system that answers "exists" to every name gets here.
        for n in first..first.saturating_add(1_000_000) {
            let name = if n == 1 {
                format!("{stem}.md")
            } else {
                format!("{stem} ({n}).md")
            };
            let lower = name.to_lowercase();
            if self.taken.contains(&lower) {
                continue;
            }
            let path = child_path(folder, &name)?;
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    self.taken.insert(lower);
                    self.next.insert(key, n + 1);
                    return Ok((path, file));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let detail = io_detail(&e, folder, Some(&path), written, total);
                    return Err(Error::Export(detail));
                }
            }
        }
        Err(Error::Export(format!(
            "too many files named \"{stem}\" are already in {}",
            folder.display()
        )))
    }
}

/// `folder/name`, checked to be a direct child of `folder`: `name` is one
/// plain path component, with no separator of any OS.
fn child_path(folder: &Path, name: &str) -> Result<PathBuf> {
    let mut parts = Path::new(name).components();
    let one_part = matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(part)), None) if part == OsStr::new(name)
    );
    let path = folder.join(name);
    if one_part
        && !name.contains(['/', '\\', '\0'])
        && path.parent() == Some(folder)
        && path.file_name() == Some(OsStr::new(name))
    {
        Ok(path)
    } else {
        Err(Error::Export(format!(
            "refusing the unsafe file name {name:?}"
        )))
    }
}

/// What went wrong, for [`Error::Export`], from an I/O error of the export.
fn io_detail(
    e: &io::Error,
    folder: &Path,
    file: Option<&Path>,
    written: usize,
    total: usize,
) -> String {
    use io::ErrorKind as K;
    let folder = folder.display();
    let mut detail = match e.kind() {
        K::NotFound if file.is_some() => format!("the folder {folder} no longer exists"),
        K::NotFound => format!("the folder {folder} does not exist"),
        K::NotADirectory => format!("{folder} is not a folder"),
        K::PermissionDenied | K::ReadOnlyFilesystem => {
            format!("the folder {folder} cannot be written (read-only, or not yours)")
        }
        K::StorageFull | K::QuotaExceeded => {
            "the disk is full; free some space and export again".into()
        }
        _ => match file {
            Some(f) => format!("{}: {e}", f.display()),
            None => format!("{folder}: {e}"),
        },
    };
    if written > 0 {
        let _ = write!(detail, " ({written} of {total} notes were written)");
    }
    detail
}

/// The file's text: front matter, `# title` if any, the body as it is.
fn render(note: &Note, out: &mut String) {
    out.clear();
    // Ids are hyphenated uuids and dates RFC 3339: plain YAML scalars that
    // need no quoting. The title stays out of the front matter.
    let _ = writeln!(out, "---\nid: {}", note.id);
    let _ = writeln!(out, "updated: {}", rfc3339(note.updated_at));
    if let Some(of) = note.conflict_of {
        let _ = writeln!(out, "conflict_of: {of}");
    }
    out.push_str("---\n");
    let heading = one_line(&note.title);
    if !heading.is_empty() {
        let _ = writeln!(out, "\n# {heading}");
    }
    if !note.body.is_empty() {
        out.push('\n');
        out.push_str(&note.body);
    }
}

/// The title on one line (a heading cannot span two), trimmed.
fn one_line(title: &str) -> String {
    title
        .trim()
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}' => ' ',
            c => c,
        })
        .collect()
}

/// The file name (without `.md`) for a note's title, safe on every OS:
///
/// * runs of whitespace (newlines, tabs) become one space;
/// * `/ \ : * ? " < > |` and control characters become `_`, and the
///   bidirectional controls that can disguise an extension are dropped;
/// * no leading or trailing dots or spaces (so never `.`, `..` or a hidden
///   file);
/// * at most [`MAX_STEM_BYTES`], cut on a character boundary and never
///   between a character and its combining marks, variation selectors or
///   zero-width joiners; a conflict copy keeps its ` (conflict copy)`;
/// * nothing left gives `Untitled`;
/// * a Windows device name (`CON`, `PRN`, `AUX`, `NUL`, `COM1`-`COM9`,
///   `LPT1`-`LPT9`..., in any case, also before an extension as in
///   `con.txt`) gets `_` after it.
pub fn file_stem(title: &str, conflict_copy: bool) -> String {
    let (title, suffix) = match title.strip_suffix(CONFLICT_COPY_SUFFIX) {
        Some(rest) if conflict_copy => (rest, CONFLICT_COPY_SUFFIX),
        _ => (title, ""),
    };
    let clean = clean(title);
    let mut stem = trim_dots(cut(&clean, MAX_STEM_BYTES - suffix.len())).to_string();
    if stem.is_empty() {
        stem.push_str(UNTITLED);
    }
    stem.push_str(suffix);
    if let Some(end) = windows_device(&stem) {
        stem.insert(end, '_');
    }
    stem
}

const FORBIDDEN: [char; 9] = ['/', '\\', ':', '*', '?', '"', '<', '>', '|'];

fn clean(title: &str) -> String {
    let mut out = String::with_capacity(title.len());
    let mut space = false;
    for c in title.chars() {
        if c.is_whitespace() {
            space = true;
        } else if !is_bidi_control(c) {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(if c.is_control() || FORBIDDEN.contains(&c) {
                '_'
            } else {
                c
            });
        }
    }
    out
}

fn trim_dots(s: &str) -> &str {
    s.trim_matches(|c| c == '.' || c == ' ')
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Marks that belong to the character before them.
fn is_extender(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FE20}'..='\u{FE2F}'
        | '\u{200D}'
        | '\u{1F3FB}'..='\u{1F3FF}'
        | '\u{E0020}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}')
}

/// `s` cut to at most `max` bytes, on a character boundary, backing off
/// so that no mark is cut from its character nor a ZWJ sequence split.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    while let Some(prev) = s[..end].chars().next_back() {
        let next = s[end..].chars().next();
        if next.is_some_and(is_extender) || prev == '\u{200D}' {
            end -= prev.len_utf8();
        } else {
            break;
        }
    }
    &s[..end]
}

/// Where to put the `_` if `stem` is a Windows device name: Windows looks
/// at the part before the first dot, trailing spaces ignored.
fn windows_device(stem: &str) -> Option<usize> {
    const DEVICES: [&str; 6] = ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];
    let base = stem.split('.').next().unwrap_or(stem).trim_end_matches(' ');
    let upper = base.to_uppercase();
    let numbered = ["COM", "LPT"].iter().any(|p| {
        upper.strip_prefix(p).is_some_and(|n| {
            matches!(
                n,
                "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³"
            )
        })
    });
    (numbered || DEVICES.contains(&upper.as_str())).then_some(base.len())
}

/// Unix seconds as RFC 3339 in UTC (`2024-02-29T13:05:09Z`), clamped to the
/// years 0000-9999 that the format allows.
fn rfc3339(unix: i64) -> String {
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let t = unix.clamp(MIN, MAX);
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian:
/// Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html>). Written out
/// rather than a date crate: the workspace has none that formats RFC 3339.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn known_dates() {
        for (t, s) in [
            (0, "1970-01-01T00:00:00Z"),
            (-1, "1969-12-31T23:59:59Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_212_509, "2024-02-29T13:15:09Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (-62_135_596_800, "0001-01-01T00:00:00Z"),
            (-62_167_219_200, "0000-01-01T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (i64::MIN, "0000-01-01T00:00:00Z"),
            (i64::MAX, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(t), s, "{t}");
        }
    }

    /// Against httpdate (a dependency already) on a spread of instants.
    #[test]
    fn agrees_with_httpdate() {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let mut t: i64 = 0;
        while t < 253_402_300_799 {
            let http =
                httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64));
            // "Sun, 06 Nov 1994 08:49:37 GMT"
            let p: Vec<&str> = http.split([' ', ':']).collect();
            let month = MONTHS.iter().position(|m| *m == p[2]).unwrap() + 1;
            let expected = format!("{}-{month:02}-{}T{}:{}:{}Z", p[3], p[1], p[4], p[5], p[6]);
            assert_eq!(rfc3339(t), expected, "{t}");
            t += 86_400 * 37 + 3_607;
        }
    }

    #[test]
    fn stems() {
        for (title, stem) in [
            ("Plan", "Plan"),
            ("", "Untitled"),
            ("   \n\t ", "Untitled"),
            (".", "Untitled"),
            ("..", "Untitled"),
            ("../x", "_x"),
            ("/etc/passwd", "_etc_passwd"),
            ("a\\b", "a_b"),
            ("a:*?\"<>|b", "a_______b"),
            ("line one\nline: two\r\n", "line one line_ two"),
            ("nul\u{0}byte\u{7}\u{9B}", "nul_byte__"),
            (".hidden", "hidden"),
            ("trailing. . ", "trailing"),
            ("  spaced   out  ", "spaced out"),
            ("evil\u{202E}dm.exe", "evildm.exe"),
            ("con", "con_"),
            ("CON", "CON_"),
            ("CON.txt", "CON_.txt"),
            ("con .txt", "con_ .txt"),
            ("Aux", "Aux_"),
            ("nul", "nul_"),
            ("com1", "com1_"),
            ("LPT9.tar.gz", "LPT9_.tar.gz"),
            ("COM¹", "COM¹_"),
            ("conin$", "conin$_"),
            ("console", "console"),
            ("COM10", "COM10"),
            ("lpt", "lpt"),
            ("🦀🦀", "🦀🦀"),
        ] {
            assert_eq!(file_stem(title, false), stem, "{title:?}");
        }
    }

    #[test]
    fn long_titles_are_cut_on_a_character() {
        let long = "é".repeat(300);
        let stem = file_stem(&long, false);
        assert_eq!(stem, "é".repeat(MAX_STEM_BYTES / 2));
        let crabs = "🦀".repeat(100);
        assert_eq!(file_stem(&crabs, false), "🦀".repeat(MAX_STEM_BYTES / 4));
        // 'e' + U+0301 is 3 bytes: after the 'x', 39 whole pairs fit in
        // 118 bytes; the 40th 'e' fits alone at 119 but would lose its accent.
        let combining = format!("x{}", "e\u{301}".repeat(100));
        assert_eq!(
            file_stem(&combining, false),
            format!("x{}", "e\u{301}".repeat(39))
        );
        // A family emoji (ZWJ sequence) is kept whole or left out.
        let family = "👨\u{200D}👩\u{200D}👧";
        let title = format!("{}{family}", "x".repeat(MAX_STEM_BYTES - 6));
        assert_eq!(file_stem(&title, false), "x".repeat(MAX_STEM_BYTES - 6));
        // Cut right after the second person, before a ZWJ.
        let title = format!("{}{family}", "x".repeat(MAX_STEM_BYTES - 11));
        assert_eq!(file_stem(&title, false), "x".repeat(MAX_STEM_BYTES - 11));
        // A cut that leaves a trailing space or dot trims it.
        let title = format!("{}. tail", "x".repeat(MAX_STEM_BYTES - 2));
        assert_eq!(file_stem(&title, false), "x".repeat(MAX_STEM_BYTES - 2));
    }

    #[test]
    fn conflict_copies_keep_their_suffix_once() {
        let title = latchkey_protocol::sync::conflict_copy_title(&"x".repeat(300));
        let stem = file_stem(&title, true);
        assert!(stem.ends_with(" (conflict copy)"), "{stem}");
        assert!(stem.len() <= MAX_STEM_BYTES);
        assert_eq!(stem.matches("conflict copy").count(), 1);
        assert_eq!(
            file_stem("Plan (conflict copy)", true),
            "Plan (conflict copy)"
        );
        assert_eq!(
            file_stem(" (conflict copy)", true),
            "Untitled (conflict copy)"
        );
        // Not a conflict copy: the words are just part of the title.
        assert_eq!(
            file_stem("Plan (conflict copy)", false),
            "Plan (conflict copy)"
        );
    }

    #[test]
    fn child_paths_are_one_plain_component() {
        let folder = Path::new("/tmp/out");
        assert!(child_path(folder, "Plan.md").is_ok());
        for bad in ["..", ".", "a/b.md", "a\\b.md", "/abs.md", "", "x\0.md"] {
            assert!(child_path(folder, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn front_matter() {
        let id = uuid::Uuid::from_u128(1);
        let of = uuid::Uuid::from_u128(2);
        let mut note = Note {
            id,
            title: "Plan: \"A\"\nnext".into(),
            body: "line 1\n---\nline 3".into(),
            rev: 3,
            updated_at: 1_709_212_509,
            conflict_of: None,
            pending: false,
            version: 1,
        };
        let mut out = String::new();
        render(&note, &mut out);
        assert_eq!(
            out,
            format!(
                "---\nid: {id}\nupdated: 2024-02-29T13:15:09Z\n---\n\n# Plan: \"A\" next\n\nline 1\n---\nline 3"
            )
        );
        note.title = " ".into();
        note.body.clear();
        note.conflict_of = Some(of);
        render(&note, &mut out);
        assert_eq!(
            out,
            format!("---\nid: {id}\nupdated: 2024-02-29T13:15:09Z\nconflict_of: {of}\n---\n")
        );
    }

    #[test]
    fn io_errors_read_as_sentences() {
        use io::ErrorKind as K;
        let folder = Path::new("/x/notes");
        let file = folder.join("Plan.md");
        let text = |k: K, file: Option<&Path>, written| {
            Error::Export(io_detail(&io::Error::from(k), folder, file, written, 10)).to_string()
        };
        assert_eq!(
            text(K::NotFound, None, 0),
            "the notes could not be exported: the folder /x/notes does not exist"
        );
        assert_eq!(
            text(K::StorageFull, Some(&file), 4),
            "the notes could not be exported: the disk is full; free some space and export again (4 of 10 notes were written)"
        );
        assert!(text(K::PermissionDenied, Some(&file), 0).contains("cannot be written"));
        assert!(text(K::ReadOnlyFilesystem, None, 0).contains("cannot be written"));
        assert!(text(K::QuotaExceeded, None, 0).contains("disk is full"));
    }

    #[test]
    fn a_failed_write_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Plan.md");
        fs::write(&path, "").unwrap();
        // Opened for reading only: the write fails.
        let file = File::open(&path).unwrap();
        let (e, removed) = fill(file, &path, "text", 1).unwrap_err();
        assert!(removed, "{e}");
        assert!(!path.exists());
    }
}
