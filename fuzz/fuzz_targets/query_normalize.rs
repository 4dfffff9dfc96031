//! Any query string is parsed or refused without a panic, a defining query survives being stored,
//! and normalizing it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odata_delta_gateway_fuzz::{query_normalization_is_idempotent, query_normalize};

fuzz_target!(|raw: &str| {
    query_normalize(raw);
    query_normalization_is_idempotent(raw);
});
