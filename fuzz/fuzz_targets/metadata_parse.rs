//! Any text is read as `$metadata` or refused without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odata_delta_gateway_fuzz::metadata_parse;

fuzz_target!(|xml: &str| metadata_parse(xml));
