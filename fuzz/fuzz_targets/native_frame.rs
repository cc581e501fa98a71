//! libFuzzer target: arbitrary bytes as a native-protocol request frame through what the
//! broker runs on one (split, flatbuffers verification with bounds, count and payload checks,
//! every field it reads).
//! Run: `cargo fuzz run native_frame --fuzz-dir fuzz -- -max_total_time=60`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tern_protocol::fuzzing::decode_native_frame(data);
});
