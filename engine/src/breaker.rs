//! Circuit breakers shared by every node of every run in this process, keyed by plugin name or
//! a step's `circuit:` key (seed requirement 6.2).
//!
//! closed → open after `failure_threshold` consecutive transient failures → after `cool_down`
//! one probe is let through (half-open) → its success closes the circuit, its transient failure
//! opens it again. While open, attempts *wait* instead of hammering the failing service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl std::fmt::Display for BreakerState {
    /// As stored in the audit (`half_open`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        })
    }
}

/// A change of state, reported so the scheduler can audit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

#[derive(Debug, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl State {
    fn public(&self) -> BreakerState {
        match self {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// How an attempt ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Transient failure: counts towards opening.
    TransientFailure,
    /// A failure that says nothing about the service's health (bad input).
    Neutral,
}

#[derive(Debug)]
pub struct Breaker {
    /// Its key among [`Breakers`] ("" for one made alone).
    key: Box<str>,
    config: BreakerConfig,
    state: Mutex<State>,
    changed: Notify,
}

/// Permission to make one attempt. Dropping it unrecorded (a cancelled probe) frees the probe
/// slot for someone else.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    recorded: bool,
    /// Set when acquiring moved the circuit from open to half-open.
    pub transition: Option<Transition>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Arc<Self> {
        Self::keyed("", config)
    }

    pub fn keyed(key: &str, config: BreakerConfig) -> Arc<Self> {
        Arc::new(Breaker {
            key: key.into(),
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
            changed: Notify::new(),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn state(&self) -> BreakerState {
        self.lock().public()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-written (every update is
        // one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit at once if the circuit is closed: the common case, with one lock and no
    /// future.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        matches!(*self.lock(), State::Closed { .. }).then(|| self.permit(false, None))
    }

    /// Waits until an attempt may be made.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let wait_until = {
                let mut st = self.lock();
                match *st {
                    State::Closed { .. } => return self.permit(false, None),
                    State::Open { until } if Instant::now() >= until => {
                        *st = State::HalfOpen { probing: true };
                        let t = Transition {
                            from: BreakerState::Open,
                            to: BreakerState::HalfOpen,
                        };
                        return self.permit(true, Some(t));
                    }
                    State::HalfOpen { probing: false } => {
                        *st = State::HalfOpen { probing: true };
                        return self.permit(true, None);
                    }
                    State::Open { until } => Some(until),
                    State::HalfOpen { probing: true } => None,
                }
            };
            let notified = self.changed.notified();
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn permit(self: &Arc<Self>, probe: bool, transition: Option<Transition>) -> Permit {
        Permit {
            breaker: Arc::clone(self),
            probe,
            recorded: false,
            transition,
        }
    }

    fn record(&self, probe: bool, outcome: Outcome) -> Option<Transition> {
        let mut st = self.lock();
        let from = st.public();
        let next = match (&*st, outcome) {
            (State::HalfOpen { .. }, Outcome::TransientFailure) if probe => State::Open {
                until: Instant::now() + self.config.cool_down,
            },
            (State::HalfOpen { .. }, Outcome::Success | Outcome::Neutral) if probe => {
                State::Closed { failures: 0 }
            }
            (State::Closed { failures }, Outcome::TransientFailure) => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    State::Open {
                        until: Instant::now() + self.config.cool_down,
                    }
                } else {
                    State::Closed { failures }
                }
            }
            (State::Closed { .. }, Outcome::Success) => State::Closed { failures: 0 },
            // Results of attempts that started before the circuit opened change nothing.
            _ => return None,
        };
        if next == *st {
            // The common case (a success while closed): no waiter can care.
            return None;
        }
        *st = next;
        let to = st.public();
        drop(st);
        self.changed.notify_waiters();
        (from != to).then_some(Transition { from, to })
    }
}

impl Permit {
    /// Records the attempt's outcome; returns the state change it caused, if any.
    pub fn record(mut self, outcome: Outcome) -> Option<Transition> {
        self.recorded = true;
        self.breaker.record(self.probe, outcome)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut st = self.breaker.lock();
            if matches!(*st, State::HalfOpen { probing: true }) {
                *st = State::HalfOpen { probing: false };
            }
            drop(st);
            self.breaker.changed.notify_waiters();
        }
    }
}

/// Every breaker of the process, by key.
#[derive(Debug, Default)]
pub struct Breakers {
    map: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    pub fn get(&self, key: &str, config: BreakerConfig) -> Arc<Breaker> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(key) {
            return Arc::clone(b);
        }
        let b = Breaker::keyed(key, config);
        map.insert(key.to_string(), Arc::clone(&b));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Arc<Breaker> {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            cool_down: Duration::from_secs(10),
        })
    }

    async fn fail(b: &Arc<Breaker>) -> Option<Transition> {
        b.acquire().await.record(Outcome::TransientFailure)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_transient_failures() {
        let b = breaker();
        assert_eq!(fail(&b).await, None);
        assert_eq!(fail(&b).await, None);
        assert_eq!(
            fail(&b).await,
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(b.state(), BreakerState::Open);
    }

    /// The fast path gives a permit only while closed: an open or half-open circuit, even
    /// past its cool-down, is left to `acquire`, which makes the probe and reports it.
    #[tokio::test(start_paused = true)]
    async fn try_acquire_only_passes_a_closed_circuit() {
        let b = breaker();
        let p = b.try_acquire().expect("closed");
        assert!(p.transition.is_none());
        assert_eq!(p.record(Outcome::TransientFailure), None);
        fail(&b).await;
        fail(&b).await;
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.try_acquire().is_none(), "the probe is `acquire`'s");
        let probe = b.acquire().await;
        assert!(probe.transition.is_some());
        assert!(b.try_acquire().is_none(), "half-open, probing");
        probe.record(Outcome::Success);
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let b = breaker();
        fail(&b).await;
        fail(&b).await;
        b.acquire().await.record(Outcome::Success);
        fail(&b).await;
        fail(&b).await;
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_failures_do_not_count() {
        let b = breaker();
        for _ in 0..5 {
            b.acquire().await.record(Outcome::Neutral);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn open_waits_for_the_cool_down_then_lets_one_probe_through() {
        let b = breaker();
        for _ in 0..3 {
            fail(&b).await;
        }
        let start = Instant::now();
        let probe = b.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(
            probe.transition,
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen
            })
        );
        // A second caller waits while the probe is out.
        let b2 = Arc::clone(&b);
        let waiter = tokio::spawn(async move { b2.acquire().await.record(Outcome::Success) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        assert_eq!(
            probe.record(Outcome::Success),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed
            })
        );
        waiter.await.unwrap();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// Attempts that started before the circuit opened end while it is half-open: their
    /// results are not the probe's, so neither a success nor a failure of theirs moves it.
    #[tokio::test(start_paused = true)]
    async fn only_the_probe_decides_a_half_open_circuit() {
        let b = breaker();
        let stale_ok = b.acquire().await;
        let stale_bad = b.acquire().await;
        let stale_dropped = b.acquire().await;
        for _ in 0..3 {
            fail(&b).await;
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        let probe = b.acquire().await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(stale_ok.record(Outcome::Success), None);
        assert_eq!(stale_bad.record(Outcome::TransientFailure), None);
        // Dropped without a result (its task cancelled): not the probe, so the probe's slot
        // stays taken and nobody else gets through.
        drop(stale_dropped);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "still the probe's to decide"
        );
        let b2 = Arc::clone(&b);
        let second = tokio::spawn(async move { b2.acquire().await.record(Outcome::Success) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished(), "a second probe got through");
        assert_eq!(
            probe.record(Outcome::Success),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed
            })
        );
        second.await.unwrap();
    }

    /// As the audit stores them (`breaker_changed`), and as the enum serialises.
    #[test]
    fn states_read_as_stored() {
        for (s, text) in [
            (BreakerState::Closed, "closed"),
            (BreakerState::Open, "open"),
            (BreakerState::HalfOpen, "half_open"),
        ] {
            assert_eq!(s.to_string(), text);
            assert_eq!(serde_json::to_value(s).unwrap(), text);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again() {
        let b = breaker();
        for _ in 0..3 {
            fail(&b).await;
        }
        let t = fail(&b).await;
        assert_eq!(
            t,
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Open
            })
        );
        let start = Instant::now();
        let _p = b.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_the_slot() {
        let b = breaker();
        for _ in 0..3 {
            fail(&b).await;
        }
        let probe = b.acquire().await;
        drop(probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let again = b.acquire().await;
        assert!(again.probe);
    }

    #[tokio::test(start_paused = true)]
    async fn breakers_are_shared_by_key() {
        let all = Breakers::default();
        let a = all.get("org", BreakerConfig::default());
        let b = all.get("org", BreakerConfig::default());
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &all.get("iam", BreakerConfig::default())));
    }
}
