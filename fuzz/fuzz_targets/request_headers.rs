//! Any `Prefer` and `OData-MaxVersion` values are read without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odata_delta_gateway_fuzz::request_headers;

fuzz_target!(|input: (Vec<&str>, &str)| request_headers(&input.0, input.1));
