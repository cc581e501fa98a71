//! libFuzzer target: arbitrary bytes as a record set through the batch validator and the
//! batch iterator the log uses on append and on recovery.
//! Run: `cargo fuzz run record_batch -- -max_total_time=60` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tern_protocol::batch::validate_batch(data);
    for batch in tern_protocol::batch::BatchIter::new(data) {
        let _ = batch;
    }
});
