//! Any bytes are scanned and canonicalized or refused without a panic; valid JSON always is
//! canonicalized, to JSON of the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odata_delta_gateway_fuzz::canonical_json;

fuzz_target!(|bytes: &[u8]| canonical_json(bytes));
