//! Benchmarks of the local note features, with no server and no network:
//! BENCHMARKS.md, "Notes: search".
//!
//! * `search`: a store of 10,000 notes (titles and bodies of words drawn
//!   from a 4,000-word vocabulary, common words far more often than rare
//!   ones), then queries as a user types them: a word prefix by prefix, a
//!   word in ten notes, two words, a common word and a two-letter prefix
//!   (the worst cases: they match most notes). Target: under 30 ms per query. Also the time to
//!   build the index of an existing database of that size (the migration of
//!   a database from before search), and the save latency with the index
//!   kept up to date.
//! * `export`: "Export all notes" of 10,000 notes with bodies of about
//!   1 KiB, half of their titles shared by two notes (so the ` (2)`
//!   numbering runs), into an empty folder of the temp dir (`TMPDIR`), five
//!   times; creating and deleting the folder are not timed.
//!
//! `cargo bench -p latchkey-client --bench notes [-- --notes N] [--only search|export]`.
//! `cargo test --benches` builds this and runs nothing.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use latchkey_client::engine::SEARCH_LIMIT;
use latchkey_client::store::LocalStore;
use latchkey_client::{Note, export_notes};
use rand::{Rng as _, SeedableRng as _};
use uuid::Uuid;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("notes bench: not measuring (run it with `cargo bench`)");
        return ExitCode::SUCCESS;
    }
    let mut notes = 10_000;
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {}
            "--only" => only = it.next().cloned(),
            "--notes" => match it.next().and_then(|v| v.parse().ok()) {
                Some(n) => notes = n,
                None => {
                    eprintln!("notes bench: --notes takes a number");
                    return ExitCode::FAILURE;
                }
            },
            other => {
                eprintln!("notes bench: unknown option {other}");
                return ExitCode::FAILURE;
            }
        }
    }
    let run = |what: &str| only.as_deref().is_none_or(|o| o == what);
    if run("search") {
        search(notes);
    }
    if run("export") {
        export(notes);
    }
    ExitCode::SUCCESS
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Prints p50, p99 and max of `sample`.
fn summary(label: &str, sample: &mut [Duration]) {
    sample.sort();
    let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label:<44} p50 {:>9}  p99 {:>9}  max {:>9}  (n={})",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0)),
        sample.len()
    );
}

/// A vocabulary of pronounceable made-up words, and a skewed pick from it:
/// word `i` comes up about as often as 1/(i+1) (Zipf), as in real text.
struct Words {
    words: Vec<String>,
    rng: rand::rngs::StdRng,
}

impl Words {
    fn new(n: usize) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let syllables = [
            "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "pla", "tre", "sto", "gri", "an", "el",
            "or", "un", "ber", "den", "fin", "mos",
        ];
        let words = (0..n)
            .map(|i| {
                let len = 1 + i % 3 + rng.gen_range(0..2);
                (0..len)
                    .map(|_| syllables[rng.gen_range(0..syllables.len())])
                    .collect()
            })
            .collect();
        Self { words, rng }
    }

    fn pick(&mut self) -> &str {
        // Inverse of the Zipf CDF, roughly: exp(uniform * ln n).
        let n = self.words.len() as f64;
        let i = (self.rng.gen_range(0.0..n.ln())).exp() as usize - 1;
        &self.words[i.min(self.words.len() - 1)]
    }

    fn text(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| self.pick().to_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn search(n: usize) {
    println!("## search over {n} notes (at most {SEARCH_LIMIT} results a query)");
    let mut words = Words::new(4000);
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("notes.db");
    let mut store = LocalStore::open(&path).expect("a store");
    let mut saves = Vec::with_capacity(n);
    for i in 0..n {
        let title = words.text(4);
        let mut body = words.text(50 + i % 200);
        if i % 1000 == 0 {
            // A word in ten notes only.
            body.push_str(" quokka");
        }
        let t = Instant::now();
        store
            .save_note(Uuid::now_v7(), None, &title, &body, i as i64)
            .expect("a save");
        saves.push(t.elapsed());
    }
    summary("save (durable, index kept)", &mut saves);

    let rare = "quokka".to_owned();
    let common = words.words[0].clone();
    let two = format!("{} {}", words.words[10], words.words[200]);
    let prefix2: String = words.words[7].chars().take(2).collect();
    let mut typed: Vec<String> = Vec::new();
    let target = &words.words[150];
    for end in 1..=target.len() {
        typed.push(target[..end].to_owned());
    }
    let queries: Vec<(String, Vec<String>)> = vec![
        (format!("typing {target:?} letter by letter"), typed),
        (format!("a rare word {rare:?}"), vec![rare.clone()]),
        (format!("two words {two:?}"), vec![two.clone()]),
        (format!("a common word {common:?}"), vec![common.clone()]),
        (format!("a two-letter prefix {prefix2:?}"), vec![prefix2]),
    ];
    for (label, qs) in &queries {
        let mut sample = Vec::new();
        let mut found = 0;
        for _ in 0..30 {
            for q in qs {
                let t = Instant::now();
                found = store.search_notes(q, SEARCH_LIMIT).expect("a search").len();
                sample.push(t.elapsed());
            }
        }
        summary(&format!("{label} -> {found} found"), &mut sample);
    }
    let mut list = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let all = store.list_notes().expect("a list");
        list.push(t.elapsed());
        assert_eq!(all.len(), n);
    }
    summary("the whole list, for comparison", &mut list);

    // The index of a database from before search, built in steps.
    drop(store);
    {
        let conn = rusqlite::Connection::open(&path).expect("the database");
        conn.execute_batch(
            "DROP TABLE notes_search; DROP TRIGGER notes_search_insert; \
             DROP TRIGGER notes_search_update; DROP TRIGGER notes_search_delete; \
             PRAGMA user_version = 4;",
        )
        .expect("back to the schema before search");
    }
    let t = Instant::now();
    let mut store = LocalStore::open(&path).expect("the store migrated");
    let open = t.elapsed();
    let t = Instant::now();
    let mut steps = 0;
    while !store
        .index_step(latchkey_client::engine::INDEX_BATCH)
        .expect("a step")
        .complete()
    {
        steps += 1;
    }
    println!(
        "migration: open {}, index {n} notes {} in {} steps",
        ms(open),
        ms(t.elapsed()),
        steps + 1
    );
}

fn export(n: usize) {
    println!("## export of {n} notes of about 1 KiB");
    let notes: Vec<Note> = (0..n)
        .map(|i| {
            let mut body = format!("Note {i}\n\n");
            while body.len() < 1024 {
                body.push_str("the quick brown fox jumps over the lazy dog; ");
            }
            Note {
                id: Uuid::from_u128(i as u128 + 1),
                title: format!("Meeting notes {}", i % n.div_ceil(2)),
                body,
                rev: 1,
                updated_at: 1_700_000_000 + i as i64,
                conflict_of: None,
                pending: false,
                version: 1,
            }
        })
        .collect();
    let cancel = AtomicBool::new(false);
    let mut sample = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("a temp dir");
        let t = Instant::now();
        let report = export_notes(&notes, dir.path(), |_, _| {}, &cancel).expect("the export");
        sample.push(t.elapsed());
        assert_eq!(report.written, n);
    }
    summary(&format!("export {n} notes"), &mut sample);
}
