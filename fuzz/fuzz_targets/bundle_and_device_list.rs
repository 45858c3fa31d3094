#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fan_out_encryptor::fuzzing::bundle_and_device_list(data));
