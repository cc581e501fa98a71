//! The RecordBatch v2 header view: owned by the storage work (see issue 2).
