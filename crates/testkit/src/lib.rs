//! latchkey-testkit: the one place the workspace's tests and benches take
//! their helpers from (a dev-dependency only; nothing here is product code).
//!
//! | module | what it is for |
//! |---|---|
//! | [`server`] | the `latchkey-server` binary: built once ([`server_bin`]), its CLI ([`run_cli`]), and [`TestServer`], restartable on its own port and database: one process on SQLite, or `LATCHKEY_TEST_SERVERS=N` instances on PostgreSQL behind nginx ([`in_cluster`], [`skip_in_cluster`]) |
//! | [`spawn`] | any server process, waited for until it logs `listening on <URL>` ([`Spawn`], [`ServerProcess`]) |
//! | [`fault`] | what can go wrong with one request ([`Fault`]), and a seeded generator |
//! | [`proxy`] | a fault-injecting TCP proxy between an engine and the server |
//! | [`tcp_link`] | a plain TCP forwarder whose link can be cut (black hole, refused), between the server and PostgreSQL ([`TcpLink`]) |
//! | [`nginx`] | nginx as the load balancer in front of server instances, with the shipped config ([`Nginx`]) |
//! | [`test_http`] | [`TestHttp`], the engine's transport with faults and counts |
//! | [`engine`] | engines with fast timings, and [`wait_for`] a status |
//! | [`cert`] | a TLS certificate for 127.0.0.1 from a CA of its own ([`localhost_cert`]) |
//! | [`vault`], [`clock`] | [`MemoryVault`] and [`TestClock`], the keychain and clock of tests |
//! | [`web`] | the tests' own HTTP calls to a server, as another device ([`web`](web::web)) |
//! | [`wire`] | sync request bodies |
//! | [`forge`] | forged and broken tokens |
//! | [`resp`] | the server's answers ([`Resp`]) and the checks PROTOCOL.md sets on them |
//! | [`session`] | this executable run again in a desktop session of its own (D-Bus, Secret Service, Xvfb) |
//! | [`names`] | unique names, ids, a free port, the time |
//! | [`postgres`] | a private PostgreSQL cluster ([`PgCluster`]), and one test's database on the store `LATCHKEY_TEST_STORE` names ([`TestDb`]) |
//! | [`poll`] | waiting with a deadline by polling |
//!
//! Everything is also at the root: `use latchkey_testkit::*;`.

pub mod cert;
pub mod clock;
pub mod engine;
pub mod fault;
pub mod forge;
pub mod names;
pub mod nginx;
pub mod poll;
pub mod postgres;
pub mod proxy;
pub mod resp;
pub mod server;
pub mod session;
pub mod spawn;
pub mod tcp_link;
pub mod test_http;
pub mod vault;
pub mod web;
pub mod wire;

pub use cert::{TestCert, localhost_cert};
pub use clock::TestClock;
pub use engine::{
    PW, engine, engine_with, save_notes, signed_in, test_config, wait_for, wait_state,
};
pub use fault::{Fault, FaultKind, Rng};
pub use forge::*;
/// For the signals of [`signal_pid`].
pub use libc;
pub use names::{free_port, now, password, unique, uuid};
pub use nginx::Nginx;
pub use poll::{poll_every, poll_until};
pub use postgres::{PgCluster, TestDb, on_postgres, skip_on_postgres};
pub use resp::{
    Resp, assert_change_shape, assert_error, assert_keys, assert_reason, assert_token_response,
};
pub use server::{
    TestServer, add_user, behind_nginx, in_cluster, run_cli, server_bin, skip_in_cluster,
    test_servers,
};
pub use session::{DesktopSession, Keyring};
pub use spawn::{ServerProcess, Spawn, signal_pid};
pub use tcp_link::{NewConnections, TcpLink, Upstream};
pub use test_http::{TestHttp, path_of};
pub use vault::MemoryVault;
pub use web::{access_token, pull_all, revoke_user_now, server_changes, server_notes, web};
pub use wire::{delete, ops, upsert};
