//! Retry policy as data (Restate's model): a value that yields its delays.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorClass, StepError};
use crate::spec::{Jitter, RetrySpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub multiplier: f64,
    pub max_delay: Duration,
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(200),
            multiplier: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// Layers `spec` over `self` (fields `spec` leaves out keep their value).
    pub fn merged(&self, spec: Option<&RetrySpec>) -> Self {
        let Some(s) = spec else { return self.clone() };
        RetryPolicy {
            max_attempts: s.max_attempts.unwrap_or(self.max_attempts).max(1),
            initial_delay: s.initial_delay.unwrap_or(self.initial_delay),
            multiplier: s.multiplier.unwrap_or(self.multiplier),
            max_delay: s.max_delay.unwrap_or(self.max_delay),
            jitter: s.jitter.unwrap_or(self.jitter),
        }
    }

    /// The delay before attempt `attempt + 1` without jitter (`attempt` counts from 1).
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let factor = self.multiplier.max(1.0).powi(exp);
        let secs = self.initial_delay.as_secs_f64() * factor;
        let max = self.max_delay.as_secs_f64();
        if !secs.is_finite() || secs >= max {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Applies the jitter to a base delay, with `r` uniform in [0, 1).
    pub fn jittered(&self, base: Duration, r: f64) -> Duration {
        let r = r.clamp(0.0, 1.0);
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => base.mul_f64(r),
            Jitter::Equal => base / 2 + (base / 2).mul_f64(r),
        }
    }

    /// The delays between attempts, in order: `max_attempts - 1` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        let mut rng = rand::rng();
        (1..self.max_attempts).map(move |a| self.jittered(self.base_delay(a), rng.random()))
    }

    /// Whether attempt `attempt` (from 1) that failed with `error` gets another try, and after
    /// how long. Permanent and critical errors never retry.
    pub fn should_retry(&self, attempt: u32, error: &StepError) -> Option<Duration> {
        if error.class != ErrorClass::Transient || attempt >= self.max_attempts {
            return None;
        }
        Some(self.jittered(self.base_delay(attempt), rand::rng().random()))
    }

    /// Checks the values a user gave; returns a message per problem.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            out.push((
                "multiplier",
                format!("multiplier must be a number ≥ 1.0, not {}", self.multiplier),
            ));
        }
        if self.initial_delay > self.max_delay {
            out.push((
                "initial_delay",
                format!(
                    "initial_delay ({}) is larger than max_delay ({})",
                    humantime::format_duration(self.initial_delay),
                    humantime::format_duration(self.max_delay)
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks of a user's values, each by hand: what is refused, what is not, and at which
    /// field.
    #[test]
    fn problems_name_the_field_at_fault() {
        let ok = RetryPolicy::default();
        assert!(ok.problems().is_empty());
        let one = RetryPolicy {
            multiplier: 1.0,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert!(
            one.problems().is_empty(),
            "1.0 and equal delays are allowed"
        );
        for m in [0.5, f64::NAN, f64::INFINITY, -2.0] {
            let p = RetryPolicy {
                multiplier: m,
                ..RetryPolicy::default()
            }
            .problems();
            assert_eq!(p.len(), 1, "{m}");
            assert_eq!(p[0].0, "multiplier");
        }
        let p = RetryPolicy {
            initial_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        }
        .problems();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "initial_delay");
        assert!(
            p[0].1.contains("10s") && p[0].1.contains("1s"),
            "{}",
            p[0].1
        );
    }

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_millis(500),
            jitter,
        }
    }

    #[test]
    fn delays_grow_and_cap() {
        let d: Vec<_> = policy(Jitter::None).delays().collect();
        assert_eq!(d, [100, 200, 400, 500].map(Duration::from_millis).to_vec());
    }

    #[test]
    fn only_transient_errors_retry() {
        let p = policy(Jitter::None);
        assert!(p.should_retry(1, &StepError::transient("x")).is_some());
        assert!(p.should_retry(1, &StepError::permanent("x")).is_none());
        assert!(p.should_retry(1, &StepError::critical("x")).is_none());
        assert!(p.should_retry(5, &StepError::transient("x")).is_none());
    }

    #[test]
    fn equal_jitter_keeps_half() {
        let p = policy(Jitter::Equal);
        assert_eq!(
            p.jittered(Duration::from_millis(100), 0.0),
            Duration::from_millis(50)
        );
        assert_eq!(
            p.jittered(Duration::from_millis(100), 1.0),
            Duration::from_millis(100)
        );
    }
}
