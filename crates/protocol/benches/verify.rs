//! Benchmark 1 of issue 2: access-token verification (`KeySet::verify`)
//! against a raw Ed25519 check of the same signing-input bytes with a
//! pre-parsed key and signature, the floor any verifier must pay.
//!
//! `cargo bench -p latchkey-protocol --bench verify` prints criterion's
//! figures, then both medians and their ratio (target: at most 1.3x).
//!
//! With `VERIFY_CALLS=<raw|verify>:<n>` in the environment it only makes
//! `n` calls of one kind and exits: run under
//! `valgrind --tool=cachegrind`, the difference between `n` calls and 0
//! calls, divided by `n`, is the instructions one call costs, a figure the
//! machine's load cannot move.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::Criterion;
use ed25519_dalek::{Signature, SigningKey, Verifier as _, VerifyingKey};
use latchkey_protocol::token::{Audience, Header, sign};
use latchkey_protocol::{AUDIENCE, Claims, KeySet};

const GROUP: &str = "verify";
const ISSUER: &str = "http://127.0.0.1:8787";
const KID: &str = "k3X9tq2LmQ7a";
const NOW: i64 = 1_764_400_000;
const LEEWAY: u64 = 30;

/// A token shaped like the server's: uuids for `sub`, `sid` and `jti`.
fn claims() -> Claims {
    Claims {
        iss: ISSUER.into(),
        aud: Audience::One(AUDIENCE.into()),
        sub: "0b6f3b8e-6a4c-4d5e-9f0a-2c1d3e4f5a6b".into(),
        name: "alice".into(),
        sid: "7e2d1c0b-9a8f-4e6d-8c5b-4a3f2e1d0c9b".into(),
        jti: "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f".into(),
        iat: NOW,
        nbf: NOW,
        exp: NOW + 900,
    }
}

/// One signed token, the key set that verifies it, and the same token
/// taken apart for the raw check.
struct Fixture {
    keys: KeySet,
    token: String,
    verifying: VerifyingKey,
    /// `header.claims`: the bytes the signature covers.
    signing_input: String,
    sig: Signature,
}

impl Fixture {
    fn new() -> Self {
        let signing = SigningKey::from_bytes(&[42u8; 32]);
        let verifying = signing.verifying_key();
        let mut keys = KeySet::new();
        // A key set as after one rotation: the current key and a retired one.
        keys.insert(KID, verifying);
        keys.insert(
            "retired0key1",
            SigningKey::from_bytes(&[7u8; 32]).verifying_key(),
        );
        let token = sign(&signing, KID, &claims());
        keys.verify(&token, ISSUER, NOW, LEEWAY)
            .expect("the bench token verifies");
        let (signing_input, sig_b64) = token.rsplit_once('.').expect("a JWT has three parts");
        let sig: [u8; 64] = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .expect("base64url signature")
            .try_into()
            .expect("a 64-byte signature");
        let sig = Signature::from_bytes(&sig);
        verifying
            .verify(signing_input.as_bytes(), &sig)
            .expect("the raw check passes");
        Self {
            signing_input: signing_input.to_owned(),
            keys,
            token,
            verifying,
            sig,
        }
    }

    fn raw(&self) -> bool {
        black_box(&self.verifying)
            .verify(
                black_box(self.signing_input.as_bytes()),
                black_box(&self.sig),
            )
            .is_ok()
    }

    fn full(&self) -> bool {
        black_box(&self.keys)
            .verify(black_box(&self.token), black_box(ISSUER), NOW, LEEWAY)
            .is_ok()
    }
}

fn benches(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group(GROUP);
    group
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .sample_size(100);
    group.bench_function("raw_ed25519", |b| b.iter(|| f.raw()));
    group.bench_function("keyset_verify", |b| b.iter(|| f.full()));
    // Everything `verify` does besides the signature check, to see where
    // any extra time goes: base64 and JSON of the header and the claims.
    let (header_b64, claims_b64) = f.signing_input.split_once('.').expect("two parts");
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            let header = URL_SAFE_NO_PAD.decode(black_box(header_b64)).ok()?;
            let header: Header = serde_json::from_slice(&header).ok()?;
            let claims = URL_SAFE_NO_PAD.decode(black_box(claims_b64)).ok()?;
            let claims: Claims = serde_json::from_slice(&claims).ok()?;
            Some((header, claims))
        })
    });
    group.finish();
}

/// Criterion runs one routine after the other, so load from another
/// process on this shared machine can land on one and not the other. This
/// times single calls, the two kinds interleaved (order swapped every pair),
/// and compares the medians: a call preempted by another process is an
/// outlier the median ignores.
fn paired(f: &Fixture) -> f64 {
    const PAIRS: usize = 40_000;
    let mut raw = Vec::with_capacity(PAIRS);
    let mut full = Vec::with_capacity(PAIRS);
    let time = |check: &dyn Fn() -> bool| {
        let started = Instant::now();
        black_box(check());
        started.elapsed().as_nanos() as f64
    };
    for i in 0..PAIRS {
        if i % 2 == 0 {
            raw.push(time(&|| f.raw()));
            full.push(time(&|| f.full()));
        } else {
            full.push(time(&|| f.full()));
            raw.push(time(&|| f.raw()));
        }
    }
    let (raw, full) = (median(&mut raw), median(&mut full));
    let ratio = full / raw;
    println!(
        "interleaved, {PAIRS} single calls each: median raw {:.2} us, \
         median KeySet::verify {:.2} us, ratio {ratio:.3}x",
        raw / 1000.0,
        full / 1000.0,
    );
    ratio
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Where criterion keeps its results: `target/criterion`, beside the
/// `release/deps/` directory this bench runs from.
fn output_directory() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The median of one benchmark, in nanoseconds, from criterion's estimates.
fn median_ns(dir: &Path, name: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(GROUP).join(name).join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// The `VERIFY_CALLS` mode: `n` calls of one kind, nothing else.
fn count_calls(f: &Fixture, spec: &str) {
    let (kind, n) = spec.split_once(':').unwrap_or((spec, "2000"));
    let n: usize = n.parse().expect("VERIFY_CALLS=<raw|verify>:<n>");
    let check: &dyn Fn() -> bool = match kind {
        "raw" => &|| f.raw(),
        "verify" => &|| f.full(),
        _ => panic!("VERIFY_CALLS=<raw|verify>:<n>"),
    };
    let accepted = (0..n).filter(|_| check()).count();
    assert_eq!(accepted, n, "every call accepts the bench token");
}

fn main() {
    let started = SystemTime::now();
    if let Ok(spec) = std::env::var("VERIFY_CALLS") {
        return count_calls(&Fixture::new(), &spec);
    }
    // `cargo bench` passes --bench; `cargo test --benches` does not, and
    // then criterion runs each routine once and measures nothing.
    let measuring = std::env::args().any(|a| a == "--bench");
    let fixture = Fixture::new();
    let dir = output_directory();
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    benches(&mut c, &fixture);
    c.final_summary();
    if !measuring {
        return;
    }

    println!();
    let ratio = paired(&fixture);
    // Only estimates written by this run (a filter may have skipped one).
    if let (Some(raw), Some(verify)) = (
        median_ns(&dir, "raw_ed25519", started),
        median_ns(&dir, "keyset_verify", started),
    ) {
        println!(
            "criterion medians: raw {:.2} us, KeySet::verify {:.2} us, ratio {:.3}x",
            raw / 1000.0,
            verify / 1000.0,
            verify / raw
        );
    }
    println!(
        "target <= 1.3x (interleaved ratio {ratio:.3}x): {}",
        if ratio <= 1.3 { "met" } else { "MISSED" }
    );
}
