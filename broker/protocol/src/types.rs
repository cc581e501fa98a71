//! Newtypes for the numbers that travel on the Kafka wire and through the log.
//!
//! A bare `i64` that means an offset is a bug waiting to happen: these types make the
//! compiler tell an offset from a timestamp, an epoch from a partition index. They are
//! plain `Copy` values with no behaviour beyond ordering and small arithmetic helpers.

use std::fmt;

macro_rules! newtype {
    ($(#[$meta:meta])* $name:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

newtype!(
    /// A record's position in a partition (Kafka's 64-bit offset).
    Offset(i64)
);
newtype!(
    /// A partition leader's epoch, stamped into `partitionLeaderEpoch` of every batch.
    LeaderEpoch(i32)
);
newtype!(
    /// An idempotent or transactional producer's id.
    ProducerId(i64)
);
newtype!(
    /// A partition's index within its topic.
    PartitionIndex(i32)
);
newtype!(
    /// A shard: one core, one executor.
    ShardId(u32)
);
newtype!(
    /// A byte position inside one segment file.
    FilePosition(u64)
);
newtype!(
    /// Milliseconds since the Unix epoch, as Kafka timestamps are.
    TimestampMs(i64)
);

impl Offset {
    pub const NONE: Offset = Offset(-1);

    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }

    pub fn plus(self, delta: i64) -> Offset {
        Offset(self.0 + delta)
    }
}

impl FilePosition {
    /// The position `bytes` further on.
    pub fn plus(self, bytes: u64) -> FilePosition {
        FilePosition(self.0 + bytes)
    }

    /// Bytes from `earlier` to here; `earlier` must not be after `self`.
    pub fn since(self, earlier: FilePosition) -> u64 {
        self.0 - earlier.0
    }
}

impl LeaderEpoch {
    /// Kafka writes -1 where no epoch is known.
    pub const NONE: LeaderEpoch = LeaderEpoch(-1);
}

impl TimestampMs {
    pub const NONE: TimestampMs = TimestampMs(-1);
}
