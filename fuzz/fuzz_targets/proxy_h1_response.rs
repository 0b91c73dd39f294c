//! The proxy's own HTTP/1.1 response codec must refuse bad upstream answers, never panic on
//! them, loop on them, or make up body bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| starphleet_proxy::fuzzing::upstream_response(data));
