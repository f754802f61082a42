//! A connection driven by an arbitrary sequence of segments, application calls and time
//! steps: no panic, and its invariants hold after every step.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    userspace::fuzzing::drive_connection(data);
});
