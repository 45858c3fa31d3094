#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| participant_resolver::fuzzing::room_input(data));
