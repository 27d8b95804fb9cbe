//! Names and numbers no other test (or run) uses: random user names and
//! passwords, ids, a free port, and the time in the Unix seconds every token
//! and record carries.

use std::net::TcpListener;

/// A name no other test (or run) uses: `prefix`, a dash and random
/// lowercase letters and digits.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A fresh random UUID, lowercase.
pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A password good enough for a test user.
pub fn password() -> String {
    unique("pw")
}

/// Unix seconds, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs() as i64
}

/// A port of 127.0.0.1 that nothing listens on (free when asked; a test
/// that needs it to stay free binds it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}
