//! Replays the server's fuzz corpora (`fuzz/corpus/<target>/`) and the
//! inputs of fixed crashes (`fuzz/regressions/<target>/`) through the entry
//! points the fuzz targets call, as plain tests: no fuzzer build needed.
//! The long fuzzing run is `bash scripts/reliability.sh fuzz`.

use std::path::Path;

use latchkey_protocol::fuzzing::replay;
use latchkey_server::fuzzing;

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz"))
}

#[test]
fn bearer_tokens_replay() {
    replay(fuzz_dir(), "server_token", fuzzing::server_token);
}

#[test]
fn push_bodies_replay() {
    replay(fuzz_dir(), "server_push_json", fuzzing::server_push_json);
}

#[test]
fn token_forms_replay() {
    replay(fuzz_dir(), "token_form", fuzzing::token_form);
}
