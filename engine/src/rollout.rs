//! Rollout controls of a `for_each` step, as data: how many of its instances may fail with the
//! step still succeeding (`tolerate`), and in which waves its instances start (`waves`,
//! canary first). Pure: the scheduler keeps one [`Progress`] per rolling step and asks it
//! which instances may start.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `tolerate:` in a workflow file: `{ count: 2 }` or `{ percent: 10 }`; either may be an
/// expression (`"{{ inputs.tolerate }}"`), read when the step fans out.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToleranceSpec {
    /// At most this many instances may fail.
    #[serde(default)]
    pub(crate) count: Option<Value>,
    /// At most this share (0–100) of the instances may fail, rounded down.
    #[serde(default)]
    pub(crate) percent: Option<Value>,
}

/// A problem of a rollout field: the field (`tolerate.count`, `waves`) and what is wrong.
pub(crate) type Problem = (&'static str, String);

/// A step's rollout as written: each part a value or an expression, read when the step fans
/// out ([`RolloutSpec::resolve`]); checked at compile time when it holds no expression.
#[derive(Debug, Clone, Default)]
pub struct RolloutSpec {
    pub(crate) tolerate: Option<ToleranceSpec>,
    /// A list of sizes (`[1, "25%"]`), or an expression giving one.
    pub(crate) waves: Option<Value>,
}

impl RolloutSpec {
    pub(crate) fn is_empty(&self) -> bool {
        self.tolerate.is_none() && self.waves.is_none()
    }

    /// The tolerance and waves, with `render` reading expressions. Problems name the field.
    pub(crate) fn resolve(
        &self,
        render: impl Fn(&Value) -> Result<Value, String>,
    ) -> Result<(Tolerance, Vec<Wave>), Vec<Problem>> {
        let mut problems = Vec::new();
        let tolerance = match &self.tolerate {
            None => Tolerance::Count(0),
            Some(t) => match (&t.count, &t.percent) {
                (Some(c), None) => match render(c).and_then(|v| whole(&v)) {
                    Ok(n) => Tolerance::Count(n),
                    Err(e) => {
                        problems.push(("tolerate.count", e));
                        Tolerance::Count(0)
                    }
                },
                (None, Some(p)) => match render(p).and_then(|v| share(&v)) {
                    Ok(p) => Tolerance::Percent(p),
                    Err(e) => {
                        problems.push(("tolerate.percent", e));
                        Tolerance::Count(0)
                    }
                },
                _ => {
                    problems.push((
                        "tolerate",
                        "`tolerate` takes one of `count` and `percent`".to_string(),
                    ));
                    Tolerance::Count(0)
                }
            },
        };
        let mut waves = Vec::new();
        if let Some(w) = &self.waves {
            match render(w) {
                Ok(Value::Array(items)) => {
                    for (k, item) in items.iter().enumerate() {
                        match Wave::parse(item) {
                            Ok(w) => waves.push(w),
                            Err(e) => problems.push(("waves", format!("wave {}: {e}", k + 1))),
                        }
                    }
                }
                Ok(other) => {
                    problems.push(("waves", format!("`waves` must be a list, not {other}")))
                }
                Err(e) => problems.push(("waves", e)),
            }
        }
        if problems.is_empty() {
            Ok((tolerance, waves))
        } else {
            Err(problems)
        }
    }
}

/// A count: a whole number ≥ 0 (a text of digits, from a text template, too).
fn whole(v: &Value) -> Result<usize, String> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as usize),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("a count is a whole number ≥ 0, not {v}"))
}

/// A share between 0 and 100.
fn share(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().trim_end_matches('%').parse().ok(),
        _ => None,
    }
    .filter(|p| (0.0..=100.0).contains(p))
    .ok_or_else(|| format!("a percent is between 0 and 100, not {v}"))
}

/// How many failures a step tolerates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    Count(usize),
    Percent(f64),
}

impl Tolerance {
    /// Whether `failed` failures of `total` instances are within it.
    pub fn allows(self, failed: usize, total: usize) -> bool {
        match self {
            Tolerance::Count(n) => failed <= n,
            // Rounded down: 10% of 5 tolerates none. Integer arithmetic on hundredths keeps
            // 10% of 30 exactly 3.
            Tolerance::Percent(p) => {
                let hundredths = (p * 100.0).round() as u128;
                (failed as u128) * 10_000 <= hundredths * (total as u128)
            }
        }
    }

    pub fn describe(self) -> String {
        match self {
            Tolerance::Count(n) => format!("{n} failure{}", if n == 1 { "" } else { "s" }),
            Tolerance::Percent(p) => format!("{p}% failures"),
        }
    }
}

/// A wave's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wave {
    Count(usize),
    Percent(f64),
}

impl Wave {
    /// Reads `1` or `"25%"`; the problem in words otherwise.
    pub(crate) fn parse(spec: &Value) -> Result<Wave, String> {
        match spec {
            Value::Number(n) => match n.as_u64() {
                Some(0) => Err("a wave of 0 instances starts nothing".into()),
                Some(n) => Ok(Wave::Count(n as usize)),
                None => Err(format!("{n} is not a number of instances")),
            },
            Value::String(s) => {
                let number = s.trim().strip_suffix('%').ok_or_else(|| {
                    format!("`{s}` is neither a number of instances nor a share like \"25%\"")
                })?;
                match number.trim().parse::<f64>() {
                    Ok(p) if p > 0.0 && p <= 100.0 => Ok(Wave::Percent(p)),
                    _ => Err(format!("`{s}`: a share is more than 0% and at most 100%")),
                }
            }
            other => Err(format!(
                "{other} is neither a number of instances nor a share like \"25%\""
            )),
        }
    }
}

/// Where each wave ends among `n` instances (exclusive, strictly increasing, the last `n`):
/// a share is rounded up (25% of 10 is 3), a wave not larger than the one before is dropped,
/// and the instances after the last wave form one more.
pub(crate) fn wave_ends(waves: &[Wave], n: usize) -> Vec<usize> {
    let mut ends = Vec::with_capacity(waves.len() + 1);
    let mut last = 0;
    for w in waves {
        let end = match *w {
            Wave::Count(c) => c,
            Wave::Percent(p) => ((p / 100.0) * n as f64).ceil() as usize,
        }
        .clamp(1, n.max(1))
        .min(n);
        if end > last {
            ends.push(end);
            last = end;
        }
    }
    if last < n {
        ends.push(n);
    }
    ends
}

/// A rolling step's progress: which wave is open, how many instances of each wave ended, how
/// many failed. Kept by the scheduler; rebuilt from the node records on resume.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    ends: Vec<usize>,
    ended: Vec<usize>,
    failed: usize,
    total: usize,
    tolerance: Tolerance,
    /// The wave whose instances may start (with every earlier one).
    open: usize,
    /// Failures went beyond the tolerance: nothing more starts.
    stopped: bool,
    /// `approve_waves`: a wave after the first starts with its first instance alone, which
    /// asks for the approval; the others wait for it.
    gated: bool,
    /// The highest wave approved (0: none after the first).
    approved: usize,
}

impl Progress {
    /// `tolerance` is `Count(0)` for a step without `tolerate`.
    pub(crate) fn new(waves: &[Wave], tolerance: Tolerance, n: usize) -> Self {
        let ends = wave_ends(waves, n);
        Progress {
            ended: vec![0; ends.len()],
            ends,
            failed: 0,
            total: n,
            tolerance,
            open: 0,
            stopped: false,
            gated: false,
            approved: 0,
        }
    }

    /// Every wave after the first waits for an approval asked by its first instance.
    pub(crate) fn gated(mut self) -> Self {
        self.gated = true;
        self
    }

    /// When instance `index` opens a wave that waits for an approval: the wave (1 is the
    /// second one) and its instances' range.
    pub(crate) fn gate_of(&self, index: usize) -> Option<(usize, std::ops::Range<usize>)> {
        if !self.gated {
            return None;
        }
        let w = self.wave_of(index);
        let start = *self.ends.get(w.checked_sub(1)?)?;
        (start == index && w > self.approved).then(|| (w, start..self.ends[w]))
    }

    /// Wave `wave` was approved: the rest of its instances may start.
    pub(crate) fn approve(&mut self, wave: usize) {
        self.approved = self.approved.max(wave);
    }

    /// How many waves there are.
    pub(crate) fn waves(&self) -> usize {
        self.ends.len()
    }

    fn wave_of(&self, index: usize) -> usize {
        self.ends.partition_point(|&end| end <= index)
    }

    /// Whether instance `index` may start now.
    pub(crate) fn may_start(&self, index: usize) -> bool {
        let w = self.wave_of(index);
        !self.stopped
            && w <= self.open
            && (!self.gated || w <= self.approved || self.ends[w - 1] == index)
    }

    /// Instance `index` ended (`failed` or not). Returns true when this made the step stop:
    /// the caller skips the instances that have not started.
    pub(crate) fn ended(&mut self, index: usize, failed: bool) -> bool {
        let w = self.wave_of(index);
        if let Some(e) = self.ended.get_mut(w) {
            *e += 1;
        }
        if failed {
            self.failed += 1;
        }
        // A wave's first instance that ended without its wave approved was refused (or
        // could not ask): the rest of the rollout waits for nothing more.
        let refused = self.gate_of(index).is_some();
        if !self.stopped && (refused || !self.tolerance.allows(self.failed, self.total)) {
            self.stopped = true;
            return true;
        }
        // Open the next wave once every instance of the open ones ended.
        while self.open + 1 < self.ends.len() && self.ended_through(self.open) {
            self.open += 1;
        }
        false
    }

    fn ended_through(&self, wave: usize) -> bool {
        self.ended[..=wave].iter().sum::<usize>() >= self.ends[wave]
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether the failures so far are within the tolerance.
    pub(crate) fn within_tolerance(&self) -> bool {
        self.tolerance.allows(self.failed, self.total)
    }

    /// The waves' ends, for the audit.
    pub(crate) fn ends(&self) -> &[usize] {
        &self.ends
    }
}

/// The `with:` of the approval asked before wave `wave` (1 is the second) of `waves`, on
/// step `step`, whose instances are `items`: the author's settings, with a `title` and a
/// `digest` of the wave (the step, the wave and its items: a decision counts for exactly
/// these) unless given, and the wave in `details`.
pub(crate) fn wave_approval(
    with: &Value,
    step: &str,
    wave: usize,
    waves: usize,
    items: &[Value],
) -> Value {
    let mut out = with.as_object().cloned().unwrap_or_default();
    let n = items.len();
    out.entry("title").or_insert_with(|| {
        Value::from(format!(
            "Start wave {} of {waves} of `{step}` ({n} instance{})",
            wave + 1,
            if n == 1 { "" } else { "s" }
        ))
    });
    out.entry("digest").or_insert_with(|| {
        let what = serde_json::json!({ "step": step, "wave": wave + 1, "items": items });
        Value::from(crate::digest::sha256_hex(
            crate::digest::canonical_json(&what).as_bytes(),
        ))
    });
    out.entry("details").or_insert_with(|| {
        serde_json::json!({ "step": step, "wave": wave + 1, "waves": waves, "instances": items })
    });
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shares_round_up_and_the_rest_is_a_last_wave() {
        let w = |s: &[Wave]| wave_ends(s, 10);
        assert_eq!(w(&[Wave::Count(1), Wave::Percent(25.0)]), vec![1, 3, 10]);
        assert_eq!(
            w(&[Wave::Count(1), Wave::Percent(25.0), Wave::Percent(100.0)]),
            vec![1, 3, 10]
        );
        // A wave not larger than the one before adds nothing.
        assert_eq!(w(&[Wave::Count(3), Wave::Percent(10.0)]), vec![3, 10]);
        assert_eq!(wave_ends(&[Wave::Count(5)], 2), vec![2]);
        assert_eq!(wave_ends(&[Wave::Count(1)], 0), Vec::<usize>::new());
    }

    #[test]
    fn wave_specs_are_read_or_refused_with_the_reason() {
        use serde_json::json;
        assert_eq!(Wave::parse(&json!(2)), Ok(Wave::Count(2)));
        assert_eq!(Wave::parse(&json!("25%")), Ok(Wave::Percent(25.0)));
        assert!(Wave::parse(&json!(0)).is_err());
        assert!(Wave::parse(&json!(-1)).is_err());
        assert!(Wave::parse(&json!("25")).is_err());
        assert!(Wave::parse(&json!("0%")).is_err());
        assert!(Wave::parse(&json!("120%")).is_err());
        assert!(Wave::parse(&json!([1])).is_err());
    }

    #[test]
    fn percent_tolerance_rounds_down() {
        assert!(Tolerance::Percent(10.0).allows(3, 30));
        assert!(!Tolerance::Percent(10.0).allows(4, 30));
        assert!(!Tolerance::Percent(10.0).allows(1, 5));
        assert!(Tolerance::Percent(100.0).allows(5, 5));
        assert!(Tolerance::Count(0).allows(0, 5));
        assert!(!Tolerance::Count(0).allows(1, 5));
    }

    #[test]
    fn a_failing_canary_stops_the_rest() {
        let mut p = Progress::new(&[Wave::Count(1)], Tolerance::Count(0), 5);
        assert!(p.may_start(0));
        assert!(!p.may_start(1));
        assert!(p.ended(0, true));
        assert!(p.stopped());
        assert!(!p.may_start(1));
    }

    #[test]
    fn a_good_canary_opens_the_next_wave() {
        let mut p = Progress::new(
            &[Wave::Count(1), Wave::Percent(50.0)],
            Tolerance::Count(1),
            6,
        );
        assert!(!p.ended(0, false));
        assert!(p.may_start(2) && !p.may_start(3));
        assert!(!p.ended(1, true), "one failure is tolerated");
        assert!(!p.may_start(3), "wave 2 has not ended");
        assert!(!p.ended(2, false));
        assert!(p.may_start(5));
        assert!(p.ended(4, true), "the second failure is one too many");
    }

    #[test]
    fn a_gated_wave_starts_with_its_first_instance_alone() {
        let mut p =
            Progress::new(&[Wave::Count(1), Wave::Count(3)], Tolerance::Count(1), 5).gated();
        assert!(
            p.may_start(0) && p.gate_of(0).is_none(),
            "the first wave asks nothing"
        );
        assert!(!p.ended(0, false));
        assert_eq!(p.gate_of(1), Some((1, 1..3)));
        assert!(
            p.may_start(1) && !p.may_start(2),
            "only the wave's first asks"
        );
        p.approve(1);
        assert!(p.may_start(2) && p.gate_of(1).is_none());
        assert!(!p.ended(1, false));
        assert!(!p.ended(2, false));
        assert_eq!(p.gate_of(3), Some((2, 3..5)));
        // Refused: the rollout stops, though one failure would be tolerated.
        assert!(p.ended(3, true));
        assert!(p.stopped() && !p.may_start(4));
    }

    #[test]
    fn a_wave_approval_names_exactly_its_wave() {
        use serde_json::json;
        let a = wave_approval(
            &json!({ "approvers": ["U1"] }),
            "deploy",
            1,
            2,
            &[json!("b")],
        );
        assert_eq!(a["approvers"], json!(["U1"]));
        assert_eq!(
            a["title"],
            json!("Start wave 2 of 2 of `deploy` (1 instance)")
        );
        let b = wave_approval(&json!({}), "deploy", 1, 2, &[json!("c")]);
        assert_ne!(a["digest"], b["digest"], "other items, another digest");
        let given = wave_approval(&json!({ "digest": "d", "title": "t" }), "deploy", 1, 2, &[]);
        assert_eq!(
            (given["digest"].clone(), given["title"].clone()),
            (json!("d"), json!("t"))
        );
    }

    proptest! {
        /// However instances end, an instance starts only when every instance of the waves
        /// before its own ended and the failures so far are within the tolerance.
        #[test]
        fn waves_open_only_after_the_waves_before_them(
            n in 1usize..40,
            sizes in proptest::collection::vec(1usize..20, 0..4),
            tolerated in 0usize..4,
            outcomes in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let waves: Vec<Wave> = sizes.iter().map(|&s| Wave::Count(s)).collect();
            let mut p = Progress::new(&waves, Tolerance::Count(tolerated), n);
            let ends = wave_ends(&waves, n);
            prop_assert_eq!(*ends.last().unwrap(), n);
            prop_assert!(ends.windows(2).all(|w| w[0] < w[1]));
            let mut done = vec![false; n];
            let mut failed = 0;
            // Start and end instances in order, as the scheduler would with one slot.
            for i in 0..n {
                if !p.may_start(i) {
                    // Only a stop keeps an instance whose earlier ones all ended from starting.
                    prop_assert!(p.stopped());
                    prop_assert!(failed > tolerated);
                    break;
                }
                let wave = ends.partition_point(|&e| e <= i);
                let before = if wave == 0 { 0 } else { ends[wave - 1] };
                prop_assert!(done[..before].iter().all(|&d| d));
                done[i] = true;
                if outcomes[i] { failed += 1; }
                let stopped = p.ended(i, outcomes[i]);
                prop_assert_eq!(stopped, failed == tolerated + 1);
            }
        }
    }
}
