//! libFuzzer target: arbitrary bytes as a Kafka request frame through every decoder the
//! broker runs (header, validating pass, kafka-protocol decode, Produce parser).
//! Run: `cargo fuzz run request_decode -- -max_total_time=60` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tern_protocol::fuzzing::decode_frame(data);
});
