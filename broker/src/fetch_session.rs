//! Fetch sessions (KIP-227): a consumer's partition set remembered between Fetch requests,
//! so each incremental request names only what changed and each response carries only
//! partitions with news.
//!
//! Plain Rust, no I/O. Sessions live on the shard that owns the client's connection (a
//! client fetches over one connection); a client that reconnects elsewhere gets
//! FETCH_SESSION_ID_NOT_FOUND and starts a new session, as the protocol expects. Ids carry
//! the shard number so they are unique across the broker.

use std::collections::HashMap;

use crate::limits;
use tern_protocol::error_code::{self, ErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPartition {
    pub topic: String,
    pub partition: i32,
    pub fetch_offset: i64,
    pub max_bytes: usize,
    /// What the client was last told; a change makes the partition news.
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

#[derive(Debug)]
struct Session {
    partitions: Vec<SessionPartition>,
    next_epoch: i32,
    used: u64,
}

/// What a Fetch request asks for, in session terms.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Answer every partition named in the request; `session_id` is 0 for sessionless fetches.
    Full {
        session_id: i32,
    },
    /// Answer the session's partitions that have news.
    Incremental {
        session_id: i32,
        partitions: Vec<SessionPartition>,
    },
    Error(ErrorCode),
}

#[derive(Debug, Default)]
pub struct FetchSessions {
    sessions: HashMap<i32, Session>,
    counter: u32,
    clock: u64,
    shard: u32,
}

const FINAL_EPOCH: i32 = -1;
const INITIAL_EPOCH: i32 = 0;

impl FetchSessions {
    pub fn new(shard: u32) -> Self {
        FetchSessions {
            shard,
            ..Default::default()
        }
    }

    fn new_id(&mut self) -> i32 {
        loop {
            self.counter = self.counter.wrapping_add(1);
            // Low 8 bits: the shard; the rest a counter; always positive and non-zero.
            let id = (((self.counter & 0x007f_ffff) << 8) | (self.shard & 0xff)) as i32;
            if id > 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// Decides how to serve a request. `requested` are the request's partitions (full list
    /// for full fetches, changes for incremental ones); `forgotten` are removals.
    pub fn plan(
        &mut self,
        session_id: i32,
        epoch: i32,
        requested: &[SessionPartition],
        forgotten: &[(String, i32)],
    ) -> Plan {
        self.clock += 1;
        if session_id != 0 && !self.sessions.contains_key(&session_id) {
            return Plan::Error(error_code::FETCH_SESSION_ID_NOT_FOUND);
        }
        match epoch {
            FINAL_EPOCH => {
                self.sessions.remove(&session_id);
                Plan::Full { session_id: 0 }
            }
            INITIAL_EPOCH => {
                self.sessions.remove(&session_id);
                if requested.len() > limits::SESSION_PARTITIONS_MAX {
                    return Plan::Full { session_id: 0 };
                }
                if self.sessions.len() >= limits::SESSIONS_PER_SHARD_MAX {
                    let oldest = self
                        .sessions
                        .iter()
                        .min_by_key(|(_, s)| s.used)
                        .map(|(id, _)| *id);
                    if let Some(oldest) = oldest {
                        self.sessions.remove(&oldest);
                    }
                }
                let id = self.new_id();
                let partitions = requested.to_vec();
                self.sessions.insert(
                    id,
                    Session {
                        partitions,
                        next_epoch: 1,
                        used: self.clock,
                    },
                );
                Plan::Full { session_id: id }
            }
            epoch => {
                let clock = self.clock;
                // Session id 0 with an incremental epoch names no session either.
                let Some(session) = self.sessions.get_mut(&session_id) else {
                    return Plan::Error(error_code::FETCH_SESSION_ID_NOT_FOUND);
                };
                if epoch != session.next_epoch {
                    return Plan::Error(error_code::INVALID_FETCH_SESSION_EPOCH);
                }
                session.next_epoch = if session.next_epoch == i32::MAX {
                    1
                } else {
                    session.next_epoch + 1
                };
                session.used = clock;
                session.partitions.retain(|p| {
                    !forgotten
                        .iter()
                        .any(|(t, i)| *t == p.topic && *i == p.partition)
                });
                for update in requested {
                    let position = session
                        .partitions
                        .iter()
                        .position(|p| p.topic == update.topic && p.partition == update.partition);
                    match position {
                        Some(index) => {
                            let existing = &mut session.partitions[index];
                            existing.fetch_offset = update.fetch_offset;
                            existing.max_bytes = update.max_bytes;
                        }
                        None if session.partitions.len() < limits::SESSION_PARTITIONS_MAX => {
                            session.partitions.push(update.clone())
                        }
                        None => {}
                    }
                }
                Plan::Incremental {
                    session_id,
                    partitions: session.partitions.clone(),
                }
            }
        }
    }

    /// Records what a response told the client about a partition.
    pub fn told(
        &mut self,
        session_id: i32,
        topic: &str,
        partition: i32,
        high_watermark: i64,
        log_start_offset: i64,
    ) {
        if let Some(session) = self.sessions.get_mut(&session_id) {
            if let Some(p) = session
                .partitions
                .iter_mut()
                .find(|p| p.topic == topic && p.partition == partition)
            {
                p.high_watermark = high_watermark;
                p.log_start_offset = log_start_offset;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(partition: i32, fetch_offset: i64) -> SessionPartition {
        SessionPartition {
            topic: "t".into(),
            partition,
            fetch_offset,
            max_bytes: 1024,
            high_watermark: -1,
            log_start_offset: -1,
        }
    }

    #[test]
    fn session_lifecycle_follows_kip_227() {
        let mut sessions = FetchSessions::new(1);
        let Plan::Full { session_id } = sessions.plan(0, 0, &[part(0, 0), part(1, 0)], &[]) else {
            panic!()
        };
        assert!(session_id > 0);
        let Plan::Incremental { partitions, .. } = sessions.plan(session_id, 1, &[part(0, 5)], &[])
        else {
            panic!()
        };
        assert_eq!(partitions, vec![part(0, 5), part(1, 0)]);
        let Plan::Incremental { partitions, .. } =
            sessions.plan(session_id, 2, &[], &[("t".into(), 1)])
        else {
            panic!()
        };
        assert_eq!(partitions, vec![part(0, 5)]);
        assert_eq!(
            sessions.plan(session_id, 2, &[], &[]),
            Plan::Error(error_code::INVALID_FETCH_SESSION_EPOCH)
        );
        assert_eq!(
            sessions.plan(session_id, -1, &[], &[]),
            Plan::Full { session_id: 0 }
        );
        assert_eq!(
            sessions.plan(session_id, 1, &[], &[]),
            Plan::Error(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
    }

    #[test]
    fn incremental_epoch_without_a_session_is_an_error_not_a_panic() {
        let mut sessions = FetchSessions::new(0);
        assert_eq!(
            sessions.plan(0, 5, &[part(0, 0)], &[]),
            Plan::Error(error_code::FETCH_SESSION_ID_NOT_FOUND)
        );
    }

    #[test]
    fn sessionless_fetch_creates_nothing() {
        let mut sessions = FetchSessions::new(0);
        assert_eq!(
            sessions.plan(0, -1, &[part(0, 0)], &[]),
            Plan::Full { session_id: 0 }
        );
        assert!(sessions.sessions.is_empty());
    }
}
