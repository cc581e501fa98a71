//! The leader-epoch rules of replication (KIP-101 and KIP-279), as pure functions shared by the
//! broker (OffsetForLeaderEpoch on the leader, the follower's fetcher) and the replication
//! simulator: where an epoch ends in the leader's log, and where a follower cuts its own.

use tern_protocol::types::{LeaderEpoch, Offset};

/// The leader's OffsetForLeaderEpoch answer for `requested`: `from_cache` is what its log's
/// epoch cache says (the largest epoch at or below `requested` and its end; `None` when the
/// cache has nothing to say), `latest` the latest epoch with data in its log, `current` the
/// epoch it leads in, `log_end` its log end.
///
/// A new leader has no batch of its own epoch until its first append, so the cache cannot
/// know that every epoch between its latest one and `current` ends at the log end; Kafka
/// records the new epoch at the log end when a broker becomes leader, with the same effect.
/// `None` is Kafka's UNDEFINED.
pub fn leader_end_offset(
    from_cache: Option<(LeaderEpoch, Offset)>,
    latest: Option<LeaderEpoch>,
    current: LeaderEpoch,
    requested: LeaderEpoch,
    log_end: Offset,
) -> Option<(LeaderEpoch, Offset)> {
    if from_cache.is_some() || requested.0 < 0 || requested > current {
        return from_cache;
    }
    match latest {
        // Epochs after the latest with data, up to the current one: nothing was written in
        // them here, so they end where the log ends.
        Some(latest) if latest < requested => Some((latest, log_end)),
        Some(_) => None,
        // No data in any epoch: everything a follower has diverges.
        None => Some((requested, log_end)),
    }
}

/// Where a follower whose latest epoch is `asked` cuts its log (ending at `log_end`, with high
/// watermark `high_watermark`) given the leader's `answer`, and whether that settles it;
/// `own_end` is the follower's own answer for an epoch (the largest epoch it has at or below
/// it, and where that ends). Kafka's rules (KIP-279): the leader's end for the epoch asked,
/// or, when the leader answers with an older epoch the follower also has, the smaller of both
/// ends for it; when the follower does not have the leader's epoch, it cuts at its own end for
/// the largest epoch below and asks again (not settled). With no answer (the leader knows no
/// epoch at or below ours), keep only what is known committed.
pub fn follower_cut(
    asked: LeaderEpoch,
    answer: Option<(LeaderEpoch, Offset)>,
    own_end: impl Fn(LeaderEpoch) -> Option<(LeaderEpoch, Offset)>,
    log_end: Offset,
    high_watermark: Offset,
) -> (Offset, bool) {
    match answer {
        None => (high_watermark.min(log_end), true),
        Some((epoch, leader_end)) if epoch == asked => (leader_end.min(log_end), true),
        Some((epoch, leader_end)) => match own_end(epoch) {
            Some((own_epoch, own)) if own_epoch == epoch => {
                (leader_end.min(own).min(log_end), true)
            }
            Some((_, own)) => (own.min(log_end), false),
            // Nothing here at or below the leader's epoch: all of it diverges.
            None => (Offset(0), true),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_storage::LeaderEpochCache;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache::default();
        for (epoch, start) in entries {
            cache.assign(LeaderEpoch(*epoch), Offset(*start));
        }
        cache
    }

    #[test]
    fn a_stale_leaders_unreplicated_tail_is_cut_where_the_new_leader_diverged() {
        // The old leader wrote epoch 5 from offset 20 to 30, replicated only to itself; the
        // new leader (epoch 6) has epochs 0 and 3 up to offset 25 and wrote nothing yet.
        let leader = cache(&[(0, 0), (3, 10)]);
        let follower = cache(&[(0, 0), (3, 10), (5, 20)]);
        let asked = LeaderEpoch(5);
        let answer = leader_end_offset(
            leader.end_offset_for(asked, Offset(25)),
            leader.latest().map(|e| e.epoch),
            LeaderEpoch(6),
            asked,
            Offset(25),
        );
        assert_eq!(answer, Some((LeaderEpoch(3), Offset(25))));
        let own = |epoch| follower.end_offset_for(epoch, Offset(30));
        assert_eq!(
            follower_cut(asked, answer, own, Offset(30), Offset(12)),
            (Offset(20), true),
            "epoch 3 ends at 20 here: everything from 20 diverges"
        );
    }

    /// The review's case: the leader answers with an epoch the follower never had, so the
    /// follower cuts at its own end for the epoch below and asks again.
    #[test]
    fn a_follower_without_the_leaders_epoch_cuts_below_it_and_asks_again() {
        let leader = cache(&[(0, 0), (3, 0), (4, 80)]);
        let follower = cache(&[(0, 0), (3, 0), (5, 100)]);
        let own = |epoch| follower.end_offset_for(epoch, Offset(130));
        let first = leader_end_offset(
            leader.end_offset_for(LeaderEpoch(5), Offset(120)),
            Some(LeaderEpoch(4)),
            LeaderEpoch(6),
            LeaderEpoch(5),
            Offset(120),
        );
        assert_eq!(first, Some((LeaderEpoch(4), Offset(120))));
        assert_eq!(
            follower_cut(LeaderEpoch(5), first, own, Offset(130), Offset(0)),
            (Offset(100), false),
            "cut to epoch 3's end here, and ask about epoch 3"
        );
        let second = leader_end_offset(
            leader.end_offset_for(LeaderEpoch(3), Offset(120)),
            Some(LeaderEpoch(4)),
            LeaderEpoch(6),
            LeaderEpoch(3),
            Offset(120),
        );
        assert_eq!(second, Some((LeaderEpoch(3), Offset(80))));
        assert_eq!(
            follower_cut(LeaderEpoch(3), second, own, Offset(100), Offset(0)),
            (Offset(80), true)
        );
    }

    #[test]
    fn a_follower_of_the_same_epoch_keeps_what_the_leader_has() {
        let leader = cache(&[(0, 0), (2, 5)]);
        let asked = LeaderEpoch(2);
        let answer = leader_end_offset(
            leader.end_offset_for(asked, Offset(40)),
            Some(LeaderEpoch(2)),
            LeaderEpoch(2),
            asked,
            Offset(40),
        );
        assert_eq!(answer, Some((asked, Offset(40))));
        assert_eq!(
            follower_cut(asked, answer, |_| None, Offset(35), Offset(0)),
            (Offset(35), true)
        );
        assert_eq!(
            follower_cut(asked, answer, |_| None, Offset(45), Offset(0)),
            (Offset(40), true)
        );
    }

    #[test]
    fn no_answer_keeps_only_what_is_committed_and_an_epoch_ahead_of_the_leader_gets_none() {
        assert_eq!(
            follower_cut(LeaderEpoch(4), None, |_| None, Offset(30), Offset(12)),
            (Offset(12), true)
        );
        assert_eq!(
            leader_end_offset(
                None,
                Some(LeaderEpoch(2)),
                LeaderEpoch(3),
                LeaderEpoch(7),
                Offset(9)
            ),
            None
        );
        assert_eq!(
            leader_end_offset(None, None, LeaderEpoch(3), LeaderEpoch(1), Offset(0)),
            Some((LeaderEpoch(1), Offset(0)))
        );
    }
}
