//! Any upstream body is read as a page or refused without a panic, and every entity of a page hashes
//! with an `Edm.Int32` key or fails on the key, independent of whitespace and member order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odata_delta_gateway_fuzz::page_parse;

fuzz_target!(|body: &[u8]| page_parse(body));
