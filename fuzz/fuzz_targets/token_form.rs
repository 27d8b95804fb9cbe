#![no_main]

use latchkey_fuzz as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_server::fuzzing::token_form(data));
