//! Slow start (Envoy's slow_start_config): an endpoint that becomes usable while its service
//! is running — added, or back from unhealthy or ejected — ramps its effective weight up
//! over the service's window instead of taking its full share of new connections at once.
//! The ramp moves in `STEPS` equal steps, each one a table the agent publishes; it starts at
//! `FIRST_STEP_PERMILLE` so the endpoint gets some traffic (and its health is seen) at once.

use std::time::{Duration, Instant};

/// Steps over one window: a new table every tenth of it.
pub const STEPS: u32 = 10;
/// The share of its weight an endpoint starts at, in thousandths.
pub const FIRST_STEP_PERMILLE: u32 = 100;
/// A whole weight, in thousandths.
pub const FULL: u32 = 1000;

/// How far into its ramp an endpoint is, in thousandths of its weight; `None` once the
/// window is over (it has its whole weight).
pub fn permille(since: Instant, now: Instant, window: Duration) -> Option<u32> {
    let elapsed = now.saturating_duration_since(since);
    if window.is_zero() || elapsed >= window {
        return None;
    }
    let step = (elapsed.as_nanos() * u128::from(STEPS) / window.as_nanos()) as u32;
    Some((step * FULL / STEPS).max(FIRST_STEP_PERMILLE))
}

/// The table weight of an endpoint with `weight` at `permille` of its ramp: weights of a
/// service with slow start are kept in thousandths, so a ramp works for weight 1 too.
pub fn table_weight(weight: u32, permille: u32) -> u32 {
    weight.saturating_mul(permille)
}

/// The weight shown for an endpoint at `permille` of its ramp (rounded up: a ramping
/// endpoint never shows 0).
pub fn shown_weight(weight: u32, permille: u32) -> u32 {
    (u64::from(weight) * u64::from(permille)).div_ceil(u64::from(FULL)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_climbs_in_tenths_from_a_tenth_and_ends_with_its_window() {
        let start = Instant::now();
        let window = Duration::from_secs(30);
        let at = |s: f64| permille(start, start + Duration::from_secs_f64(s), window);
        assert_eq!(at(0.0), Some(100));
        assert_eq!(at(2.9), Some(100));
        assert_eq!(at(6.0), Some(200));
        assert_eq!(at(15.0), Some(500));
        assert_eq!(at(29.9), Some(900));
        assert_eq!(at(30.0), None);
        assert_eq!(permille(start, start, Duration::ZERO), None);
    }

    #[test]
    fn weights_keep_their_ratio_and_show_whole() {
        assert_eq!(table_weight(1, FULL), 1000);
        assert_eq!(table_weight(80, 200), 16_000);
        assert_eq!(shown_weight(1, 100), 1);
        assert_eq!(shown_weight(80, 250), 20);
        assert_eq!(shown_weight(0, 500), 0);
    }
}
