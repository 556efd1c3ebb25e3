//! A service's effective weights from its endpoints' states, with Envoy's panic threshold:
//! when too little of the configured weight is healthy, route to every endpoint by its
//! configured weight rather than overload the few that are left.

use super::State;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub weights: Vec<u32>,
    /// True when the panic threshold overrode health.
    pub panic: bool,
}

/// `endpoints`: (configured weight, state) per endpoint. `panic_threshold`: percent, 0 = off.
pub fn effective_weights(endpoints: &[(u16, State)], panic_threshold: u8) -> Effective {
    let configured: u64 = endpoints.iter().map(|&(w, _)| u64::from(w)).sum();
    let healthy: u64 = weight_in(endpoints, |s| s == State::Healthy);
    // A new endpoint waits for its first passing probe — unless nothing is usable yet, as
    // right after start, when unknown endpoints are used rather than refusing everything.
    let usable =
        |state: State| state == State::Healthy || (healthy == 0 && state == State::Unknown);
    let usable_weight = weight_in(endpoints, usable);
    let panic = panic_threshold > 0
        && configured > 0
        && usable_weight * 100 < configured * u64::from(panic_threshold);
    let weights = endpoints
        .iter()
        .map(|&(weight, state)| {
            let used = state != State::Draining && (panic || usable(state));
            if used { u32::from(weight) } else { 0 }
        })
        .collect();
    Effective { weights, panic }
}

fn weight_in(endpoints: &[(u16, State)], pick: impl Fn(State) -> bool) -> u64 {
    endpoints
        .iter()
        .filter(|&&(_, s)| pick(s))
        .map(|&(w, _)| u64::from(w))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    #[test]
    fn healthy_endpoints_keep_their_weight_others_get_none() {
        let e = effective_weights(&[(1, Healthy), (2, Unhealthy), (7, Healthy)], 0);
        assert_eq!(e.weights, vec![1, 0, 7]);
        assert!(!e.panic);
    }

    #[test]
    fn unknown_endpoints_wait_unless_nothing_is_usable() {
        assert_eq!(
            effective_weights(&[(1, Healthy), (1, Unknown)], 0).weights,
            vec![1, 0]
        );
        assert_eq!(
            effective_weights(&[(1, Unknown), (1, Unknown)], 0).weights,
            vec![1, 1]
        );
    }

    #[test]
    fn below_the_panic_threshold_everything_gets_its_configured_weight() {
        let e = effective_weights(
            &[(1, Unhealthy), (1, Unhealthy), (2, Healthy), (0, Draining)],
            60,
        );
        assert!(e.panic, "half the weight is healthy, threshold 60 %");
        assert_eq!(e.weights, vec![1, 1, 2, 0], "draining stays drained");
        let e = effective_weights(&[(1, Unhealthy), (1, Unhealthy), (2, Healthy)], 50);
        assert!(!e.panic, "exactly at the threshold is not panic");
        assert_eq!(e.weights, vec![0, 0, 2]);
    }

    #[test]
    fn panic_can_be_turned_off() {
        let e = effective_weights(&[(1, Unhealthy), (1, Ejected)], 0);
        assert!(!e.panic);
        assert_eq!(e.weights, vec![0, 0]);
    }
}
