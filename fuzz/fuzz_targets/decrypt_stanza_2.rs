#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    omemo_muc::fuzzing::decrypt_stanza(omemo_muc::session_store::Namespace::Twomemo, data);
});
