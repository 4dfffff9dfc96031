//! Rewriting upstream links in a streamed body does not depend on where the chunks are cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odata_delta_gateway_fuzz::link_rewrite;

fuzz_target!(|input: (Vec<usize>, &[u8])| link_rewrite(input.1, &input.0));
