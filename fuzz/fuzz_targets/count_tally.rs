//! Any counts an upstream reports and any page sizes it delivers are tallied without overflow, and
//! the `$skip` read-on that a shortfall starts goes forwards and ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odata_delta_gateway_fuzz::{Round, count_tally};

fuzz_target!(|input: (Vec<Round>, Vec<Round>, u64)| {
    let (enumeration, rounds, step) = input;
    count_tally(&enumeration, &rounds, step);
});
