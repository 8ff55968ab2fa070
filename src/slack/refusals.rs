//! Requests the front door refused before knowing who sent them (bad signature, body over the
//! limit, connection caps), tallied by reason and peer address and written to the audit log
//! as one summary per period instead of one durable commit each: a flood of forged requests
//! then costs a counter, and the summary still says who, why and how often.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Distinct (reason, peer) pairs kept per period; the rest are counted together, so a
/// spoofing flood cannot grow the summary without bound.
const MAX_KEYS: usize = 256;

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
}

struct Window {
    since: DateTime<Utc>,
    tally: BTreeMap<(String, String), Tally>,
    other: Tally,
}

impl Window {
    fn new() -> Self {
        Window {
            since: Utc::now(),
            tally: BTreeMap::new(),
            other: Tally::default(),
        }
    }
}

/// One period's refusals, as audited (`slack_requests_refused`).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub total: u64,
    pub refusals: Vec<Entry>,
    /// Refusals past the first [`MAX_KEYS`] distinct reasons and peers.
    #[serde(skip_serializing_if = "is_zero")]
    pub other: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Entry {
    pub reason: String,
    /// The address the request came from (`unknown` over Socket Mode or in tests).
    pub peer: String,
    pub count: u64,
    pub bytes: u64,
}

pub struct Refusals {
    window: Mutex<Window>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            window: Mutex::new(Window::new()),
        }
    }
}

impl Refusals {
    /// Counts one refusal. The first of its kind from a peer in a period is logged at once
    /// (so a misconfigured secret shows up now, not at the summary); the rest only counted.
    pub fn note(&self, reason: &str, peer: Option<IpAddr>, bytes: usize) {
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        let mut guard = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut *guard;
        let key = (reason.to_string(), peer);
        let bytes = bytes as u64;
        let room = w.tally.len() < MAX_KEYS;
        let first = match w.tally.get_mut(&key) {
            Some(t) => {
                t.count += 1;
                t.bytes += bytes;
                false
            }
            None if room => {
                w.tally.insert(key.clone(), Tally { count: 1, bytes });
                true
            }
            None => {
                w.other.count += 1;
                w.other.bytes += bytes;
                false
            }
        };
        drop(guard);
        if first {
            tracing::warn!(reason, peer = %key.1, "refused a request (further ones from this address are counted and audited as a summary)");
        }
    }

    /// The period's summary, starting a new period; `None` when nothing was refused.
    pub fn take(&self) -> Option<Summary> {
        let w = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *w, Window::new())
        };
        let total = w.tally.values().map(|t| t.count).sum::<u64>() + w.other.count;
        if total == 0 {
            return None;
        }
        Some(Summary {
            since: w.since,
            until: Utc::now(),
            total,
            refusals: w
                .tally
                .into_iter()
                .map(|((reason, peer), t)| Entry {
                    reason,
                    peer,
                    count: t.count,
                    bytes: t.bytes,
                })
                .collect(),
            other: w.other.count,
        })
    }
}

/// True at most once per period: for warnings that could repeat per request or per frame.
pub struct Every {
    period: Duration,
    last: Option<Instant>,
    /// Times it was asked since it last said yes.
    pub suppressed: u64,
}

impl Every {
    pub fn new(period: Duration) -> Self {
        Every {
            period,
            last: None,
            suppressed: 0,
        }
    }

    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.period)
        {
            self.suppressed += 1;
            return false;
        }
        self.last = Some(now);
        self.suppressed = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_tallied_by_reason_and_peer_and_a_take_starts_over() {
        let r = Refusals::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..1000 {
            r.note("signature", a, 10);
        }
        r.note("body over the limit", a, 5000);
        r.note("signature", None, 1);
        let s = r.take().expect("a summary");
        assert_eq!(s.total, 1002);
        assert_eq!(
            s.refusals,
            vec![
                Entry {
                    reason: "body over the limit".into(),
                    peer: "10.0.0.1".into(),
                    count: 1,
                    bytes: 5000
                },
                Entry {
                    reason: "signature".into(),
                    peer: "10.0.0.1".into(),
                    count: 1000,
                    bytes: 10_000
                },
                Entry {
                    reason: "signature".into(),
                    peer: "unknown".into(),
                    count: 1,
                    bytes: 1
                },
            ]
        );
        assert!(r.take().is_none(), "a new period starts empty");
    }

    #[test]
    fn a_flood_from_many_addresses_stays_bounded() {
        let r = Refusals::default();
        for i in 0..10_000u32 {
            r.note("signature", Some(IpAddr::from(i.to_be_bytes())), 0);
        }
        let s = r.take().expect("a summary");
        assert_eq!(s.total, 10_000);
        assert_eq!(s.refusals.len(), MAX_KEYS);
        assert_eq!(s.other, 10_000 - MAX_KEYS as u64);
    }

    #[test]
    fn every_says_yes_once_per_period() {
        let mut e = Every::new(Duration::from_secs(60));
        assert!(e.due());
        assert!(!e.due());
        assert!(!e.due());
        assert_eq!(e.suppressed, 2);
    }
}
