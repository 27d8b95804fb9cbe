//! Handler tests: the whole `Router` driven with `oneshot`, over a state
//! built on a fresh database of the store `LATCHKEY_TEST_STORE` names
//! (SQLite by default, or `postgres`). Every answer goes through
//! [`app::App::call`], which also checks the invariants PROTOCOL.md sets for
//! all answers: never a 5xx or a 422, every error a protocol error body.
//!
//! One test binary (each file under `tests/` is its own binary, linked on
//! its own), one module per route group.

mod app;

mod bearer;
mod concurrency;
mod devices;
mod events;
mod history;
mod meta;
mod other_process;
mod outage;
mod pull;
mod push;
mod refresh;
mod revoke;
mod router;
mod sign_in;
mod sync;
mod throttle;
