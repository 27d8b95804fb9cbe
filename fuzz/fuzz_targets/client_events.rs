#![no_main]

use latchkey_fuzz as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_client::fuzzing::client_events(data));
