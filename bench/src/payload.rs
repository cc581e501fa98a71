//! The header every benchmark message carries, so the consumer can compute end-to-end latency.
//!
//! Owns: the byte layout of the header, its encoding and its checked decoding, and the filler
//! bytes after it.
//! Must never: trust consumed bytes; a message from another run or another tool decodes to an
//! error, never to a wrong latency.
//! Fits: producers write the header at the start of each payload; consumers decode it and
//! record `consumed_ns - scheduled_ns`, which is meaningful because both sides read the same
//! monotonic `schedule::Clock` of one process.
//!
//! ```text
//! offset  size  field
//!      0     4  magic            b"TRNB"
//!      4     4  producer_index   u32 little-endian
//!      8     8  run_id           u64 little-endian, random per run
//!     16     8  scheduled_ns     u64 little-endian, ns since the run's clock base
//!     24     8  sequence         u64 little-endian, per producer
//!     32     …  filler           pseudo-random bytes up to the message size
//! ```

pub const MAGIC: [u8; 4] = *b"TRNB";
const PRODUCER_INDEX_OFFSET: usize = MAGIC.len();
const RUN_ID_OFFSET: usize = PRODUCER_INDEX_OFFSET + 4;
const SCHEDULED_NS_OFFSET: usize = RUN_ID_OFFSET + 8;
const SEQUENCE_OFFSET: usize = SCHEDULED_NS_OFFSET + 8;
pub const HEADER_BYTES: usize = SEQUENCE_OFFSET + 8;
const _: () = assert!(HEADER_BYTES == 32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub producer_index: u32,
    pub run_id: u64,
    pub scheduled_ns: u64,
    pub sequence: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {len_bytes} bytes is shorter than the {HEADER_BYTES}-byte header")]
    TooShort { len_bytes: usize },
    #[error("payload does not start with the tern-bench magic")]
    BadMagic,
    #[error("payload belongs to run {run_id:#x}, not this one")]
    OtherRun { run_id: u64 },
}

impl Header {
    pub fn encode(&self, out: &mut [u8]) {
        assert!(
            out.len() >= HEADER_BYTES,
            "payload buffer shorter than the header"
        );
        out[..PRODUCER_INDEX_OFFSET].copy_from_slice(&MAGIC);
        out[PRODUCER_INDEX_OFFSET..RUN_ID_OFFSET]
            .copy_from_slice(&self.producer_index.to_le_bytes());
        out[RUN_ID_OFFSET..SCHEDULED_NS_OFFSET].copy_from_slice(&self.run_id.to_le_bytes());
        out[SCHEDULED_NS_OFFSET..SEQUENCE_OFFSET].copy_from_slice(&self.scheduled_ns.to_le_bytes());
        out[SEQUENCE_OFFSET..HEADER_BYTES].copy_from_slice(&self.sequence.to_le_bytes());
    }

    /// Decodes the header of a consumed payload, rejecting anything not produced by `run_id`.
    pub fn decode(bytes: &[u8], run_id: u64) -> Result<Header, DecodeError> {
        if bytes.len() < HEADER_BYTES {
            return Err(DecodeError::TooShort {
                len_bytes: bytes.len(),
            });
        }
        if bytes[..PRODUCER_INDEX_OFFSET] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let header = Header {
            producer_index: u32_at(PRODUCER_INDEX_OFFSET),
            run_id: u64_at(RUN_ID_OFFSET),
            scheduled_ns: u64_at(SCHEDULED_NS_OFFSET),
            sequence: u64_at(SEQUENCE_OFFSET),
        };
        if header.run_id != run_id {
            return Err(DecodeError::OtherRun {
                run_id: header.run_id,
            });
        }
        Ok(header)
    }
}

/// A small, fast, seeded generator (SplitMix64) for filler bytes, sizes and keys. Benchmarks
/// need reproducible inputs, not cryptographic ones, and this keeps a dependency out.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; the modulo bias is negligible for the small `n` we use.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A run id that differs between runs without needing a random-number dependency.
pub fn fresh_run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    SplitMix64::new(nanos ^ ((std::process::id() as u64) << 32)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            producer_index: 7,
            run_id: 0xABCD,
            scheduled_ns: 123_456_789,
            sequence: 42,
        };
        let mut buf = [0u8; 64];
        h.encode(&mut buf);
        assert_eq!(Header::decode(&buf, 0xABCD), Ok(h));
    }

    #[test]
    fn foreign_payloads_are_rejected() {
        let h = Header {
            producer_index: 0,
            run_id: 1,
            scheduled_ns: 0,
            sequence: 0,
        };
        let mut buf = [0u8; 32];
        h.encode(&mut buf);
        assert_eq!(
            Header::decode(&buf, 2),
            Err(DecodeError::OtherRun { run_id: 1 })
        );
        assert_eq!(
            Header::decode(&buf[..31], 1),
            Err(DecodeError::TooShort { len_bytes: 31 })
        );
        buf[0] = b'X';
        assert_eq!(Header::decode(&buf, 1), Err(DecodeError::BadMagic));
    }
}
