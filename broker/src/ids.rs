//! Random identifiers the broker mints: cluster ids, topic ids, member-id suffixes.
//!
//! They come from the kernel's generator (`getrandom(2)`), never from a seeded or
//! time-derived source, except in the fallback below. Ids that become cluster state travel
//! inside metadata commands, so applying a command never draws randomness.

/// `N` random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SAFETY: getrandom writes at most N bytes into our buffer.
    let filled = unsafe { libc::getrandom(out.as_mut_ptr().cast(), N, 0) };
    if filled != N as isize {
        // The kernel's generator cannot fail for small requests once booted; fall back to
        // time-derived bytes rather than failing a topic creation.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (index, byte) in out.iter_mut().enumerate() {
            *byte = (nanos >> ((index % 16) * 8)) as u8 ^ index as u8;
        }
    }
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new cluster id: 16 random bytes in hex, fixed at a data directory's first start.
pub fn new_cluster_id() -> String {
    hex(&random_bytes::<16>())
}

/// A new topic id (Kafka's topic UUID).
pub fn new_topic_id() -> [u8; 16] {
    random_bytes::<16>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_differ() {
        let (a, b) = (new_cluster_id(), new_cluster_id());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_ne!(new_topic_id(), new_topic_id());
    }
}
