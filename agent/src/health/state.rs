//! One endpoint's health as seen by one service: active probe results with hysteresis, and
//! passive ejection. Pure: the caller supplies the time.

use std::time::{Duration, Instant};

use crate::config::{HealthCheck, Outlier};

/// Longest ejection, however often an endpoint has been ejected.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// What the operator sees (`weft services`, `weft_endpoint_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Unknown,
    Healthy,
    Unhealthy,
    Ejected,
    Draining,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Ejected => "ejected",
            State::Draining => "draining",
        }
    }
}

/// The active-probe verdict, changed only after enough consecutive results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Unknown,
    Healthy,
    Unhealthy,
}

/// One endpoint's health, kept small (16 bytes): there is one per endpoint of every service,
/// 100,000 of them at scale.
#[derive(Clone, Debug)]
pub struct EndpointHealth {
    verdict: Verdict,
    last_probe_ok: Option<bool>,
    /// After an ejection ends, a probing endpoint waits for one passing probe.
    awaiting_probe_after_ejection: bool,
    /// Consecutive probe results agreeing with each other, counting towards a threshold.
    streak: u16,
    passive_failures: u16,
    ejections: u16,
    ejected_until: Deadline,
}

/// An instant as milliseconds since the agent's clock base; 0 means none. Ejections last at
/// most five minutes, far within the 49 days a `u32` of milliseconds spans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Deadline(u32);

fn clock_base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl Deadline {
    fn at(instant: Instant) -> Deadline {
        let ms = instant.saturating_duration_since(clock_base()).as_millis();
        Deadline(u32::try_from(ms).unwrap_or(u32::MAX).max(1))
    }

    fn get(self) -> Option<Instant> {
        (self.0 != 0).then(|| clock_base() + Duration::from_millis(u64::from(self.0)))
    }
}

impl EndpointHealth {
    /// A new endpoint: unknown until its first probe, or healthy if nothing probes it.
    pub fn new(probing: bool) -> Self {
        EndpointHealth {
            verdict: if probing {
                Verdict::Unknown
            } else {
                Verdict::Healthy
            },
            streak: 0,
            last_probe_ok: None,
            passive_failures: 0,
            ejections: 0,
            ejected_until: Deadline::default(),
            awaiting_probe_after_ejection: false,
        }
    }

    /// Records a probe result; true if the state may have changed.
    pub fn on_probe(&mut self, ok: bool, check: &HealthCheck) -> bool {
        let before = (self.verdict, self.awaiting_probe_after_ejection);
        if self.last_probe_ok == Some(ok) {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak = 1;
        }
        self.last_probe_ok = Some(ok);
        if ok && !self.is_ejected() {
            self.awaiting_probe_after_ejection = false;
        }
        self.verdict = match (self.verdict, ok) {
            // The first passing probe makes a new endpoint usable.
            (Verdict::Unknown, true) => Verdict::Healthy,
            (Verdict::Unknown, false) if u32::from(self.streak) >= check.unhealthy_threshold => {
                Verdict::Unhealthy
            }
            (Verdict::Healthy, false) if u32::from(self.streak) >= check.unhealthy_threshold => {
                Verdict::Unhealthy
            }
            (Verdict::Unhealthy, true) if u32::from(self.streak) >= check.healthy_threshold => {
                Verdict::Healthy
            }
            (verdict, _) => verdict,
        };
        before != (self.verdict, self.awaiting_probe_after_ejection)
    }

    /// A real connection to this endpoint failed. Returns true if it should be ejected now;
    /// the caller decides whether the service's ejection cap allows it (`eject`).
    pub fn on_connect_failure(&mut self, outlier: &Outlier) -> bool {
        self.passive_failures = self.passive_failures.saturating_add(1);
        !self.is_ejected() && u32::from(self.passive_failures) >= outlier.consecutive_failures
    }

    pub fn on_connect_success(&mut self) {
        self.passive_failures = 0;
    }

    /// Ejects for base × (times ejected), capped at five minutes.
    pub fn eject(&mut self, outlier: &Outlier, now: Instant) {
        self.ejections = self.ejections.saturating_add(1);
        let duration = outlier
            .base_ejection
            .saturating_mul(u32::from(self.ejections))
            .min(MAX_EJECTION);
        self.ejected_until = Deadline::at(now + duration);
        self.passive_failures = 0;
    }

    /// Ends an ejection whose time is up; true if something changed.
    pub fn expire(&mut self, now: Instant, probing: bool) -> bool {
        match self.ejected_until.get() {
            Some(until) if until <= now => {
                self.ejected_until = Deadline::default();
                self.awaiting_probe_after_ejection = probing;
                true
            }
            _ => false,
        }
    }

    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until.get()
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until != Deadline::default()
    }

    pub fn state(&self, configured_weight: u16) -> State {
        if configured_weight == 0 {
            State::Draining
        } else if self.is_ejected() {
            State::Ejected
        } else if self.awaiting_probe_after_ejection {
            State::Unhealthy
        } else {
            match self.verdict {
                Verdict::Unknown => State::Unknown,
                Verdict::Healthy => State::Healthy,
                Verdict::Unhealthy => State::Unhealthy,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Probe;

    fn check(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    fn outlier() -> Outlier {
        Outlier {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn first_passing_probe_makes_a_new_endpoint_healthy() {
        let mut h = EndpointHealth::new(true);
        assert_eq!(h.state(1), State::Unknown);
        assert!(h.on_probe(true, &check(2, 2)));
        assert_eq!(h.state(1), State::Healthy);
    }

    #[test]
    fn thresholds_give_hysteresis() {
        let c = check(3, 2);
        let mut h = EndpointHealth::new(true);
        h.on_probe(true, &c);
        h.on_probe(false, &c);
        assert_eq!(h.state(1), State::Healthy, "one failure is not enough");
        h.on_probe(false, &c);
        assert_eq!(h.state(1), State::Unhealthy);
        h.on_probe(true, &c);
        h.on_probe(true, &c);
        assert_eq!(h.state(1), State::Unhealthy, "two successes are not enough");
        h.on_probe(true, &c);
        assert_eq!(h.state(1), State::Healthy);
    }

    #[test]
    fn flapping_every_probe_never_changes_state() {
        let c = check(2, 2);
        let mut h = EndpointHealth::new(true);
        h.on_probe(true, &c);
        let mut changes = 0;
        for i in 0..100 {
            if h.on_probe(i % 2 == 0, &c) {
                changes += 1;
            }
        }
        assert_eq!(changes, 0);
        assert_eq!(h.state(1), State::Healthy);
    }

    #[test]
    fn ejection_grows_with_each_ejection_and_is_capped() {
        let o = outlier();
        let mut h = EndpointHealth::new(false);
        let now = Instant::now();
        assert!(!h.on_connect_failure(&o));
        assert!(!h.on_connect_failure(&o));
        assert!(h.on_connect_failure(&o));
        h.eject(&o, now);
        assert_eq!(h.state(1), State::Ejected);
        let near = |want: Duration| {
            let until = h.ejected_until().unwrap();
            let want = now + want;
            let off = until.max(want).duration_since(until.min(want));
            assert!(off <= Duration::from_millis(1), "{until:?}");
        };
        near(Duration::from_secs(30));
        assert!(h.expire(now + Duration::from_secs(30), false));
        assert_eq!(
            h.state(1),
            State::Healthy,
            "without probing it returns at expiry"
        );
        h.eject(&o, now);
        let near = |h: &EndpointHealth, want: Duration| {
            let until = h.ejected_until().unwrap();
            let want = now + want;
            let off = until.max(want).duration_since(until.min(want));
            assert!(off <= Duration::from_millis(1), "{until:?}");
        };
        near(&h, Duration::from_secs(60));
        for _ in 0..20 {
            h.eject(&o, now);
        }
        near(&h, MAX_EJECTION);
        assert_eq!(std::mem::size_of::<EndpointHealth>(), 16);
    }

    #[test]
    fn after_ejection_a_probing_endpoint_waits_for_a_passing_probe() {
        let o = outlier();
        let c = check(2, 2);
        let mut h = EndpointHealth::new(true);
        h.on_probe(true, &c);
        let now = Instant::now();
        h.eject(&o, now);
        h.on_probe(true, &c);
        assert_eq!(
            h.state(1),
            State::Ejected,
            "probes do not end an ejection early"
        );
        h.expire(now + Duration::from_secs(31), true);
        assert_eq!(h.state(1), State::Unhealthy);
        h.on_probe(true, &c);
        assert_eq!(h.state(1), State::Healthy);
    }

    #[test]
    fn weight_zero_is_draining_whatever_the_probes_say() {
        let mut h = EndpointHealth::new(true);
        h.on_probe(true, &check(1, 1));
        assert_eq!(h.state(0), State::Draining);
    }
}
