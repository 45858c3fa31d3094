#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fan_out_encryptor::fuzzing::sce_envelope(data));
