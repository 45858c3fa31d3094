#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    omemo_muc::fuzzing::key_exchange(data);
});
