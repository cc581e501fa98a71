//! Bounded primitives for reading and writing Kafka wire types.
//!
//! `Reader` walks a byte slice and never reads past its end: every accessor returns a
//! `WireError` instead of panicking, and every length taken from the wire is checked
//! against the bytes that remain before anything is allocated. All multi-byte integers are
//! big-endian, as Kafka's are. `put_*` helpers append to a `BytesMut`.

use bytes::{BufMut, BytesMut};
use thiserror::Error;

/// Why a piece of wire data could not be read. Every variant is a malformed request: the
/// broker answers it by closing the connection (there is no way to know what the client
/// meant), with a log line naming the variant.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("unexpected end of data at byte {position} (needed {needed} more)")]
    Truncated { position: usize, needed: usize },
    #[error("negative length {length} at byte {position}")]
    NegativeLength { position: usize, length: i64 },
    #[error(
        "array of {count} elements at byte {position} cannot fit in the {remaining} bytes left"
    )]
    ArrayTooLong {
        position: usize,
        count: u64,
        remaining: usize,
    },
    #[error("varint longer than its type at byte {position}")]
    VarintTooLong { position: usize },
    #[error("string at byte {position} is not UTF-8")]
    InvalidUtf8 { position: usize },
    #[error("{count} trailing bytes after the message")]
    TrailingBytes { count: usize },
    #[error("unsupported version {version} of api key {api_key}")]
    UnsupportedVersion { api_key: i16, version: i16 },
    #[error("unknown api key {api_key}")]
    UnknownApiKey { api_key: i16 },
    #[error("decoder rejected the message: {reason}")]
    Invalid { reason: String },
}

/// A cursor over a byte slice that cannot read out of bounds.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, position: 0 }
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn take(&mut self, count: usize) -> Result<&'a [u8], WireError> {
        if count > self.remaining() {
            return Err(WireError::Truncated {
                position: self.position,
                needed: count - self.remaining(),
            });
        }
        let slice = &self.bytes[self.position..self.position + count];
        self.position += count;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    pub fn i8(&mut self) -> Result<i8, WireError> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    pub fn i16(&mut self) -> Result<i16, WireError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, WireError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub fn uuid(&mut self) -> Result<[u8; 16], WireError> {
        self.array()
    }

    /// Kafka's unsigned varint (at most 5 bytes for a u32).
    pub fn uvarint(&mut self) -> Result<u32, WireError> {
        let start = self.position;
        let mut value: u32 = 0;
        for index in 0..5 {
            let byte = self.array::<1>()?[0];
            value |= u32::from(byte & 0x7f) << (index * 7);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::VarintTooLong { position: start })
    }

    /// Zig-zag signed varint (record fields), at most 5 bytes.
    pub fn varint(&mut self) -> Result<i32, WireError> {
        let raw = self.uvarint()?;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    /// Zig-zag signed varlong, at most 10 bytes.
    pub fn varlong(&mut self) -> Result<i64, WireError> {
        let start = self.position;
        let mut value: u64 = 0;
        for index in 0..10 {
            let byte = self.array::<1>()?[0];
            value |= u64::from(byte & 0x7f) << (index * 7);
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(WireError::VarintTooLong { position: start })
    }

    /// A length for a string or bytes field: `None` for null. Compact forms store
    /// length + 1 as an unsigned varint (0 is null); classic forms an i16 or i32 (-1 is null).
    fn length(&mut self, compact: bool, wide: bool) -> Result<Option<usize>, WireError> {
        let position = self.position;
        let length: i64 = if compact {
            i64::from(self.uvarint()?) - 1
        } else if wide {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        match length {
            -1 => Ok(None),
            n if n < 0 => Err(WireError::NegativeLength {
                position,
                length: n,
            }),
            n => {
                let n = n as usize;
                if n > self.remaining() {
                    return Err(WireError::Truncated {
                        position: self.position,
                        needed: n - self.remaining(),
                    });
                }
                Ok(Some(n))
            }
        }
    }

    pub fn nullable_string(&mut self, compact: bool) -> Result<Option<&'a str>, WireError> {
        match self.length(compact, false)? {
            None => Ok(None),
            Some(n) => {
                let position = self.position;
                let bytes = self.take(n)?;
                std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| WireError::InvalidUtf8 { position })
            }
        }
    }

    pub fn string(&mut self, compact: bool) -> Result<&'a str, WireError> {
        let position = self.position;
        self.nullable_string(compact)?
            .ok_or(WireError::NegativeLength {
                position,
                length: -1,
            })
    }

    /// Nullable bytes; returns the byte range inside the reader's slice, so callers can
    /// slice a shared buffer without copying.
    pub fn nullable_bytes_range(
        &mut self,
        compact: bool,
    ) -> Result<Option<std::ops::Range<usize>>, WireError> {
        match self.length(compact, true)? {
            None => Ok(None),
            Some(n) => {
                let start = self.position;
                self.take(n)?;
                Ok(Some(start..start + n))
            }
        }
    }

    /// An array's element count, checked so that `count * element_bytes_min` fits in what
    /// remains: a hostile count can never make a caller reserve more than the frame justifies.
    pub fn array_len(
        &mut self,
        compact: bool,
        element_bytes_min: usize,
    ) -> Result<Option<usize>, WireError> {
        let position = self.position;
        let count: i64 = if compact {
            i64::from(self.uvarint()?) - 1
        } else {
            i64::from(self.i32()?)
        };
        match count {
            -1 => Ok(None),
            n if n < 0 => Err(WireError::NegativeLength {
                position,
                length: n,
            }),
            n => {
                let fits = (n as u64).saturating_mul(element_bytes_min.max(1) as u64)
                    <= self.remaining() as u64;
                if !fits {
                    return Err(WireError::ArrayTooLong {
                        position,
                        count: n as u64,
                        remaining: self.remaining(),
                    });
                }
                Ok(Some(n as usize))
            }
        }
    }

    /// Skips a tagged-field section (flexible versions): a count, then tag, size, bytes.
    pub fn skip_tagged_fields(&mut self) -> Result<(), WireError> {
        let count = self.uvarint()?;
        for _ in 0..count {
            let _tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }

    pub fn expect_end(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(WireError::TrailingBytes { count }),
        }
    }
}

pub fn put_uvarint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

pub fn put_string(out: &mut BytesMut, value: &str, compact: bool) {
    if compact {
        put_uvarint(out, value.len() as u32 + 1);
    } else {
        out.put_i16(value.len() as i16);
    }
    out.put_slice(value.as_bytes());
}

/// Array length prefix; `None` writes the null array.
pub fn put_array_len(out: &mut BytesMut, count: Option<usize>, compact: bool) {
    match (count, compact) {
        (None, true) => put_uvarint(out, 0),
        (None, false) => out.put_i32(-1),
        (Some(n), true) => put_uvarint(out, n as u32 + 1),
        (Some(n), false) => out.put_i32(n as i32),
    }
}

/// Length prefix for a bytes field of `len` bytes (`None` is null).
pub fn put_bytes_len(out: &mut BytesMut, len: Option<usize>, compact: bool) {
    match (len, compact) {
        (None, true) => put_uvarint(out, 0),
        (None, false) => out.put_i32(-1),
        (Some(n), true) => put_uvarint(out, n as u32 + 1),
        (Some(n), false) => out.put_i32(n as i32),
    }
}

/// An empty tagged-field section.
pub fn put_empty_tags(out: &mut BytesMut) {
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarint_round_trips_edges() {
        for value in [0u32, 1, 127, 128, 16_383, 16_384, u32::MAX] {
            let mut out = BytesMut::new();
            put_uvarint(&mut out, value);
            let mut reader = Reader::new(&out);
            assert_eq!(reader.uvarint().unwrap(), value);
            assert!(reader.is_empty());
        }
    }

    #[test]
    fn hostile_array_length_is_rejected_before_allocation() {
        let bytes = 0x7fff_ffffi32.to_be_bytes();
        let mut reader = Reader::new(&bytes);
        assert!(matches!(
            reader.array_len(false, 1),
            Err(WireError::ArrayTooLong { .. })
        ));
    }

    #[test]
    fn string_longer_than_buffer_is_truncated_error() {
        let bytes = [0u8, 10, b'a'];
        let mut reader = Reader::new(&bytes);
        assert!(matches!(
            reader.string(false),
            Err(WireError::Truncated { .. })
        ));
    }
}
