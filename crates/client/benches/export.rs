//! "Export all notes" (`latchkey_client::export_notes`): 10,000 notes with
//! bodies of about 1 KiB, half of their titles shared by two notes (so the
//! ` (2)` numbering runs), into an empty folder of the temp dir. Each
//! iteration is one whole export into a fresh folder; creating the folder
//! and deleting it afterwards are not timed.
//!
//! `cargo bench -p latchkey-client --bench export` prints criterion's
//! figures (10 samples of one export each). `cargo test --benches` runs it
//! once and measures nothing.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use latchkey_client::{Note, export_notes};
use uuid::Uuid;

const NOTES: usize = 10_000;

fn notes() -> Vec<Note> {
    let words = "the quick brown fox jumps over the lazy dog; ";
    (0..NOTES)
        .map(|i| {
            let mut body = format!("Note {i}\n\n");
            while body.len() < 1024 {
                body.push_str(words);
            }
            Note {
                id: Uuid::from_u128(i as u128 + 1),
                title: format!("Meeting notes {}", i % (NOTES / 2)),
                body,
                rev: 1,
                updated_at: 1_700_000_000 + i as i64,
                conflict_of: None,
                pending: false,
                version: 1,
            }
        })
        .collect()
}

fn export(c: &mut Criterion) {
    let notes = notes();
    let cancel = AtomicBool::new(false);
    let mut group = c.benchmark_group("export");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(NOTES as u64));
    group.bench_function("10k_notes_1KiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("a temp dir");
                let started = Instant::now();
                let report =
                    export_notes(&notes, dir.path(), |_, _| {}, &cancel).expect("the export");
                total += started.elapsed();
                assert_eq!(report.written, NOTES);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, export);
criterion_main!(benches);
