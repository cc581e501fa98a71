//! The server-side assignors of the consumer group protocol (KIP-848), named as Kafka names
//! them: `uniform` (balanced and sticky) and `range` (contiguous ranges per topic).
//!
//! Pure functions from (members with their subscriptions and previous target, topics with
//! their partition counts) to a new target assignment. Deterministic: the same input always
//! gives the same output, whatever the order of maps' insertion, so that a coordinator that
//! replays its log and one that computed live agree.

use std::collections::{BTreeMap, BTreeSet};

/// A topic's 16-byte id, as the metadata image and Kafka's records have it.
pub type TopicId = [u8; 16];
/// Partitions by topic id.
pub type Assignment = BTreeMap<TopicId, BTreeSet<i32>>;

/// Which server assignor computes a group's target assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    Uniform,
    Range,
}

impl Assignor {
    pub fn parse(name: &str) -> Option<Assignor> {
        match name {
            "uniform" => Some(Assignor::Uniform),
            "range" => Some(Assignor::Range),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }
}

/// One member as an assignor sees it.
#[derive(Debug, Clone)]
pub struct Subscriber<'a> {
    pub id: &'a str,
    /// The topics it subscribes to that exist.
    pub topics: BTreeSet<TopicId>,
    /// Its current target assignment, which `uniform` keeps as far as balance allows.
    pub previous: Option<&'a Assignment>,
}

/// Computes the target assignment of every member (members without partitions get an
/// empty assignment). `topics` maps each subscribed topic to its partition count.
pub fn assign(
    assignor: Assignor,
    members: &[Subscriber<'_>],
    topics: &BTreeMap<TopicId, i32>,
) -> BTreeMap<String, Assignment> {
    match assignor {
        Assignor::Uniform => uniform(members, topics),
        Assignor::Range => range(members, topics),
    }
}

/// Kafka's range assignor: for each topic, its subscribers in member id order take
/// contiguous ranges of its partitions, the first `partitions % subscribers` one more.
fn range(
    members: &[Subscriber<'_>],
    topics: &BTreeMap<TopicId, i32>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.to_owned(), Assignment::new()))
        .collect();
    for (topic, &count) in topics {
        let mut subscribers: Vec<&str> = members
            .iter()
            .filter(|m| m.topics.contains(topic))
            .map(|m| m.id)
            .collect();
        if subscribers.is_empty() || count <= 0 {
            continue;
        }
        subscribers.sort_unstable();
        let n = subscribers.len() as i32;
        let (base, extra) = (count / n, count % n);
        let mut next = 0;
        for (index, member) in subscribers.iter().enumerate() {
            let take = base + i32::from((index as i32) < extra);
            if take > 0 {
                out.entry((*member).to_owned())
                    .or_default()
                    .entry(*topic)
                    .or_default()
                    .extend(next..next + take);
            }
            next += take;
        }
    }
    out
}

/// Kafka's uniform assignor: every partition of a subscribed topic goes to one of its
/// subscribers, loads (partition counts) differ by at most one wherever subscriptions allow
/// it, and a partition stays with its previous owner unless balance needs it elsewhere.
///
/// 1. Each member keeps the partitions of its previous target that still exist and that it
///    still subscribes to.
/// 2. Every other partition goes to its least-loaded subscriber (ties to the lowest id).
/// 3. While some member holds two more than another it can reach through a chain of
///    members subscribed to each other's topics, one partition moves along each hop of the
///    shortest such chain (the highest partition of the first shared topic, so that moves
///    are deterministic). Each chain lowers the sum of squared loads, so this ends.
fn uniform(
    members: &[Subscriber<'_>],
    topics: &BTreeMap<TopicId, i32>,
) -> BTreeMap<String, Assignment> {
    let mut sorted: Vec<&Subscriber<'_>> = members.iter().collect();
    sorted.sort_unstable_by(|a, b| a.id.cmp(b.id));
    let mut held: Vec<Assignment> = vec![Assignment::new(); sorted.len()];
    let mut load: Vec<usize> = vec![0; sorted.len()];
    let mut taken: BTreeSet<(TopicId, i32)> = BTreeSet::new();

    // 1. Stickiness.
    for (index, member) in sorted.iter().enumerate() {
        let Some(previous) = member.previous else {
            continue;
        };
        for (topic, partitions) in previous {
            let Some(&count) = topics.get(topic) else {
                continue;
            };
            if !member.topics.contains(topic) {
                continue;
            }
            for &partition in partitions {
                if partition < count && taken.insert((*topic, partition)) {
                    held[index].entry(*topic).or_default().insert(partition);
                    load[index] += 1;
                }
            }
        }
    }

    // 2. Everything unowned, partition-major so that one topic's partitions spread out.
    let mut unowned: Vec<(i32, TopicId)> = Vec::new();
    for (topic, &count) in topics {
        for partition in 0..count.max(0) {
            if !taken.contains(&(*topic, partition)) {
                unowned.push((partition, *topic));
            }
        }
    }
    unowned.sort_unstable();
    for (partition, topic) in unowned {
        let target = (0..sorted.len())
            .filter(|&i| sorted[i].topics.contains(&topic))
            .min_by_key(|&i| (load[i], i));
        if let Some(i) = target {
            held[i].entry(topic).or_default().insert(partition);
            load[i] += 1;
        }
    }

    // 3. Balance, along chains: a partition moves from X to Y when Y subscribes to its
    //    topic; a path from an overloaded member to one two or more below it moves one
    //    partition per hop, so only its ends change load.
    let bound: usize = topics.values().map(|&c| c.max(0) as usize).sum::<usize>() + 1;
    let n = sorted.len();
    // The first topic X holds that Y subscribes to.
    let shared = |held: &[Assignment], x: usize, y: usize| -> Option<TopicId> {
        held[x]
            .iter()
            .find(|(topic, partitions)| !partitions.is_empty() && sorted[y].topics.contains(*topic))
            .map(|(topic, _)| *topic)
    };
    for _ in 0..bound {
        let mut by_load: Vec<usize> = (0..n).collect();
        by_load.sort_unstable_by_key(|&i| (std::cmp::Reverse(load[i]), i));
        let mut path: Option<Vec<usize>> = None;
        for &from in &by_load {
            // Breadth-first, in member order, so the shortest (then first) path wins.
            let mut parent: Vec<Option<usize>> = vec![None; n];
            let mut visited = vec![false; n];
            visited[from] = true;
            let mut queue = std::collections::VecDeque::from([from]);
            let mut end = None;
            while let Some(x) = queue.pop_front() {
                if x != from && load[x] + 1 < load[from] {
                    end = Some(x);
                    break;
                }
                for y in 0..n {
                    if !visited[y] && shared(&held, x, y).is_some() {
                        visited[y] = true;
                        parent[y] = Some(x);
                        queue.push_back(y);
                    }
                }
            }
            if let Some(mut at) = end {
                let mut hops = vec![at];
                while let Some(p) = parent[at] {
                    hops.push(p);
                    at = p;
                }
                hops.reverse();
                path = Some(hops);
                break;
            }
        }
        let Some(path) = path else {
            break;
        };
        for hop in path.windows(2) {
            let (x, y) = (hop[0], hop[1]);
            let Some(topic) = shared(&held, x, y) else {
                break;
            };
            let Some(partition) = held[x]
                .get(&topic)
                .and_then(|p| p.iter().next_back().copied())
            else {
                break;
            };
            if let Some(set) = held[x].get_mut(&topic) {
                set.remove(&partition);
                if set.is_empty() {
                    held[x].remove(&topic);
                }
            }
            held[y].entry(topic).or_default().insert(partition);
            load[x] -= 1;
            load[y] += 1;
        }
    }

    sorted
        .iter()
        .zip(held)
        .map(|(member, assignment)| (member.id.to_owned(), assignment))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: u8) -> TopicId {
        [n; 16]
    }

    fn sub<'a>(id: &'a str, topics: &[u8], previous: Option<&'a Assignment>) -> Subscriber<'a> {
        Subscriber {
            id,
            topics: topics.iter().map(|&t| topic(t)).collect(),
            previous,
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    /// Every partition of every topic to exactly one subscriber of it.
    fn check_complete(
        out: &BTreeMap<String, Assignment>,
        members: &[Subscriber<'_>],
        topics: &BTreeMap<TopicId, i32>,
    ) {
        let mut seen = BTreeSet::new();
        for (id, assignment) in out {
            let member = members.iter().find(|m| m.id == id).expect("member");
            for (t, partitions) in assignment {
                assert!(
                    member.topics.contains(t),
                    "{id} got a topic it does not subscribe to"
                );
                for &p in partitions {
                    assert!(p < topics[t]);
                    assert!(seen.insert((*t, p)), "partition {p} assigned twice");
                }
            }
        }
        let expected: usize = topics
            .iter()
            .filter(|(t, _)| members.iter().any(|m| m.topics.contains(*t)))
            .map(|(_, &c)| c as usize)
            .sum();
        assert_eq!(seen.len(), expected, "gap in the assignment");
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let topics = BTreeMap::from([(topic(1), 7)]);
        let members = [
            sub("b", &[1], None),
            sub("a", &[1], None),
            sub("c", &[1], None),
        ];
        let out = assign(Assignor::Range, &members, &topics);
        check_complete(&out, &members, &topics);
        assert_eq!(out["a"][&topic(1)], BTreeSet::from([0, 1, 2]));
        assert_eq!(out["b"][&topic(1)], BTreeSet::from([3, 4]));
        assert_eq!(out["c"][&topic(1)], BTreeSet::from([5, 6]));
    }

    #[test]
    fn uniform_balances_and_keeps_what_it_can() {
        let topics = BTreeMap::from([(topic(1), 6), (topic(2), 6)]);
        let two = [sub("a", &[1, 2], None), sub("b", &[1, 2], None)];
        let first = assign(Assignor::Uniform, &two, &topics);
        check_complete(&first, &two, &topics);
        assert_eq!(count(&first["a"]), 6);
        assert_eq!(count(&first["b"]), 6);
        // A third member: each of the first two gives up exactly two, keeps four.
        let three = [
            sub("a", &[1, 2], Some(&first["a"])),
            sub("b", &[1, 2], Some(&first["b"])),
            sub("c", &[1, 2], None),
        ];
        let second = assign(Assignor::Uniform, &three, &topics);
        check_complete(&second, &three, &topics);
        for id in ["a", "b", "c"] {
            assert_eq!(count(&second[id]), 4, "{id}: {second:?}");
        }
        for id in ["a", "b"] {
            let kept: usize = second[id]
                .iter()
                .map(|(t, ps)| {
                    ps.intersection(first[id].get(t).unwrap_or(&BTreeSet::new()))
                        .count()
                })
                .sum();
            assert_eq!(kept, 4, "{id} should keep four of its six");
        }
        // Same input, same output.
        assert_eq!(second, assign(Assignor::Uniform, &three, &topics));
    }

    #[test]
    fn uniform_with_different_subscriptions_gives_each_topic_to_its_subscribers() {
        let topics = BTreeMap::from([(topic(1), 4), (topic(2), 2), (topic(3), 3)]);
        let members = [
            sub("a", &[1], None),
            sub("b", &[1, 2], None),
            sub("c", &[2], None),
        ];
        let out = assign(Assignor::Uniform, &members, &topics);
        check_complete(&out, &members, &topics);
        assert!(count(&out["a"]) >= 2 && count(&out["b"]) >= 1 && count(&out["c"]) >= 1);
        let loads: Vec<usize> = out.values().map(count).collect();
        assert!(
            loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
            "{out:?}"
        );
    }

    #[test]
    fn partitions_of_a_shrunk_or_deleted_topic_are_dropped() {
        let previous = Assignment::from([
            (topic(1), BTreeSet::from([0, 1, 5])),
            (topic(9), BTreeSet::from([0])),
        ]);
        let topics = BTreeMap::from([(topic(1), 3)]);
        let members = [sub("a", &[1, 9], Some(&previous))];
        let out = assign(Assignor::Uniform, &members, &topics);
        assert_eq!(
            out["a"],
            Assignment::from([(topic(1), BTreeSet::from([0, 1, 2]))])
        );
    }
}
