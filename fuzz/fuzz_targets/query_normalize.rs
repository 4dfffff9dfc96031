//! Any query string is parsed or refused without a panic, and a defining query survives being stored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odata_delta_gateway_fuzz::query_normalize;

fuzz_target!(|raw: &str| query_normalize(raw));
