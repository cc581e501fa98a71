//! Client quotas, I/O-free: which quota applies to a (user, client id) by Kafka's
//! precedence, and the per-shard rate windows that turn bytes over a quota into a throttle
//! time by Kafka's formula.
//!
//! Kafka enforces a quota per broker; here each shard enforces its share (the quota divided
//! by the shard count), as the connections of a client spread over the shards. A client
//! over its quota gets the throttle time in its response (librdkafka and the Java client
//! then hold back, KIP-219) and the broker reads nothing more from that connection until the
//! time has passed.

use std::collections::HashMap;

use tern_replication::metadata::{ClientQuota, QuotaEntity};

pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
/// Percent of one thread's time a client's requests may take (Kafka counts its request
/// handler and network threads; here, the time its requests' handlers run on the shard).
pub const REQUEST_PERCENTAGE: &str = "request_percentage";
/// The quota keys Tern enforces; AlterClientQuotas refuses others rather than store what
/// would not be honoured.
pub const ENFORCED: [&str; 3] = [PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE];

/// Which kinds of quota exist at all: derived once per metadata image, so that a broker
/// without quotas looks nothing up (and times nothing) per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// Some client has some quota.
    pub any: bool,
    /// Some client has a request quota: requests are timed.
    pub requests: bool,
}

impl Presence {
    pub fn of(quotas: &[ClientQuota]) -> Presence {
        Presence {
            any: !quotas.is_empty(),
            requests: quotas
                .iter()
                .any(|quota| quota.values.contains_key(REQUEST_PERCENTAGE)),
        }
    }
}

pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";

/// Rate windows: Kafka's `quota.window.num` samples of `quota.window.size.seconds`.
const SAMPLES: usize = 11;
const SAMPLE_MS: i64 = 1000;

/// One entity type's part of a quota entity: `Some(Some(name))` a name, `Some(None)` the
/// type's default, `None` absent.
type Part = Option<Option<String>>;

/// The quota for `key` that applies to `user` (the principal's name) and `client_id`, with
/// the sensor it is counted in: the entity's types instantiated for this client (a default
/// user quota gives every user a sensor of their own, as in Kafka).
pub fn resolve(
    quotas: &[ClientQuota],
    user: &str,
    client_id: &str,
    key: &str,
) -> Option<(SensorKey, f64)> {
    // Kafka's order: the most specific entity that sets the key wins.
    let named = |name: &str| Some(name.to_owned());
    let order: [(Part, Part); 8] = [
        (Some(named(user)), Some(named(client_id))),
        (Some(named(user)), Some(None)),
        (Some(named(user)), None),
        (Some(None), Some(named(client_id))),
        (Some(None), Some(None)),
        (Some(None), None),
        (None, Some(named(client_id))),
        (None, Some(None)),
    ];
    for (user_part, client_part) in order {
        let mut entity: QuotaEntity = Vec::new();
        if let Some(name) = &client_part {
            entity.push((CLIENT_ID.to_owned(), name.clone()));
        }
        if let Some(name) = &user_part {
            entity.push((USER.to_owned(), name.clone()));
        }
        let Ok(index) = quotas.binary_search_by(|quota| quota.entity.cmp(&entity)) else {
            continue;
        };
        let Some(value) = quotas[index]
            .values
            .get(key)
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let sensor = SensorKey {
            key: key.to_owned(),
            user: user_part.map(|_| user.to_owned()),
            client_id: client_part.map(|_| client_id.to_owned()),
        };
        return Some((sensor, value));
    }
    None
}

/// Whose bytes a rate window counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SensorKey {
    pub key: String,
    pub user: Option<String>,
    pub client_id: Option<String>,
}

/// Bytes per one-second sample over the last `SAMPLES` seconds.
#[derive(Debug, Default)]
struct Window {
    /// (sample start, bytes), oldest first.
    samples: Vec<(i64, f64)>,
}

impl Window {
    fn record(&mut self, now_ms: i64, bytes: f64) {
        let start = now_ms - now_ms.rem_euclid(SAMPLE_MS);
        match self.samples.last_mut() {
            Some((last, total)) if *last == start => *total += bytes,
            _ => self.samples.push((start, bytes)),
        }
        let horizon = start - (SAMPLES as i64 - 1) * SAMPLE_MS;
        self.samples.retain(|(at, _)| *at >= horizon);
    }

    /// Bytes per second over the window, measured (as Kafka) over the time the samples span,
    /// and that span in milliseconds.
    fn rate(&self, now_ms: i64) -> (f64, i64) {
        let Some((first, _)) = self.samples.first() else {
            return (0.0, 0);
        };
        // Kafka counts at least all but one sample's length, so a first burst is not
        // measured over a few milliseconds.
        let span = (now_ms - first).max((SAMPLES as i64 - 1) * SAMPLE_MS);
        let total: f64 = self.samples.iter().map(|(_, bytes)| bytes).sum();
        (total * 1000.0 / span as f64, span)
    }
}

/// One shard's rate windows.
#[derive(Debug, Default)]
pub struct Tracker {
    windows: HashMap<SensorKey, Window>,
}

impl Tracker {
    /// Counts `amount` (bytes, or percent-seconds of thread time) for the sensor and returns the throttle time the client earns: zero
    /// under the quota, else Kafka's `(rate - quota) / quota * window`, at most the window.
    pub fn record(&mut self, sensor: SensorKey, quota: f64, now_ms: i64, amount: f64) -> i64 {
        let window = self.windows.entry(sensor).or_default();
        window.record(now_ms, amount);
        if quota <= 0.0 {
            return SAMPLES as i64 * SAMPLE_MS;
        }
        let (rate, span) = window.rate(now_ms);
        if rate <= quota {
            return 0;
        }
        let throttle = ((rate - quota) / quota * span as f64) as i64;
        throttle.clamp(0, SAMPLES as i64 * SAMPLE_MS)
    }

    /// Forgets windows idle for longer than the window (bounded memory under many clients).
    pub fn sweep(&mut self, now_ms: i64) {
        let horizon = now_ms - SAMPLES as i64 * SAMPLE_MS;
        self.windows
            .retain(|_, window| window.samples.last().is_some_and(|(at, _)| *at >= horizon));
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn quota(entity: &[(&str, Option<&str>)], key: &str, value: f64) -> ClientQuota {
        let mut entity: QuotaEntity = entity
            .iter()
            .map(|(t, n)| (t.to_string(), n.map(str::to_owned)))
            .collect();
        entity.sort();
        ClientQuota {
            entity,
            values: BTreeMap::from([(key.to_owned(), value.to_string())]),
        }
    }

    #[test]
    fn the_most_specific_entity_wins_as_in_kafka() {
        let mut quotas = vec![
            quota(&[(CLIENT_ID, None)], PRODUCER_BYTE_RATE, 1.0),
            quota(&[(USER, None)], PRODUCER_BYTE_RATE, 2.0),
            quota(&[(USER, Some("alice"))], PRODUCER_BYTE_RATE, 3.0),
            quota(
                &[(USER, Some("alice")), (CLIENT_ID, Some("app"))],
                PRODUCER_BYTE_RATE,
                4.0,
            ),
        ];
        quotas.sort_by(|a, b| a.entity.cmp(&b.entity));
        let value = |user: &str, client: &str| {
            resolve(&quotas, user, client, PRODUCER_BYTE_RATE).map(|(_, v)| v)
        };
        assert_eq!(value("alice", "app"), Some(4.0));
        assert_eq!(value("alice", "other"), Some(3.0));
        assert_eq!(value("bob", "app"), Some(2.0));
        assert_eq!(resolve(&quotas, "bob", "app", CONSUMER_BYTE_RATE), None);
        // A default user quota is counted per user.
        let (sensor, _) = resolve(&quotas, "bob", "app", PRODUCER_BYTE_RATE).unwrap();
        assert_eq!(sensor.user.as_deref(), Some("bob"));
        assert_eq!(sensor.client_id, None);
        let only_clients = vec![quota(&[(CLIENT_ID, None)], PRODUCER_BYTE_RATE, 1.0)];
        let (sensor, value) = resolve(&only_clients, "bob", "app", PRODUCER_BYTE_RATE).unwrap();
        assert_eq!((sensor.client_id.as_deref(), value), (Some("app"), 1.0));
    }

    #[test]
    fn bytes_over_the_quota_earn_a_throttle_in_proportion() {
        let sensor = SensorKey {
            key: PRODUCER_BYTE_RATE.into(),
            user: Some("alice".into()),
            client_id: None,
        };
        let mut tracker = Tracker::default();
        // 1000 B/s quota: 5000 bytes now are 500 B/s over the 10 s minimum span.
        assert_eq!(tracker.record(sensor.clone(), 1000.0, 0, 5_000.0), 0);
        // 20,000 more: 2,500 B/s, 1.5 times over: 15 s of throttle, capped at the window.
        assert_eq!(tracker.record(sensor.clone(), 1000.0, 10, 20_000.0), 11_000);
        // Ten seconds later the old samples still count; twenty seconds later they are gone.
        assert!(tracker.record(sensor.clone(), 1000.0, 10_000, 1.0) > 0);
        assert_eq!(tracker.record(sensor.clone(), 1000.0, 30_000, 1.0), 0);
        tracker.sweep(60_000);
        assert!(tracker.is_empty());
    }
}
