//! Scale: 10,000 services with 100,000 endpoints installed, the measured service looked up
//! among all of them, and a one-service change applied without touching the rest.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use weft_tests::client::{self, share};

const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 10;

/// Services 0..9998 point at addresses nothing serves; the last one at the real backends.
fn config(last_weights: (u16, u16)) -> String {
    let mut text = String::from("services:\n");
    for s in 0..SERVICES - 1 {
        let _ = write!(
            text,
            "  - name: svc-{s}\n    address: 10.96.{}.{}\n    port: 80\n    health: {{ kind: none }}\n    endpoints:\n",
            s / 250,
            s % 250 + 1
        );
        for e in 0..ENDPOINTS_PER_SERVICE {
            let i = s * ENDPOINTS_PER_SERVICE + e;
            let _ = writeln!(
                text,
                "      - {{ address: 10.{}.{}.{}, port: 8080, weight: {} }}",
                128 + (i >> 16),
                (i >> 8) & 255,
                i & 255,
                e + 1
            );
        }
    }
    let _ = write!(
        text,
        "  - name: measured\n    address: 10.99.0.1\n    port: 80\n    endpoints:\n      - {{ address: 127.0.0.2, port: 8080, weight: {} }}\n      - {{ address: 127.0.0.3, port: 8080, weight: {} }}\n",
        last_weights.0, last_weights.1
    );
    for e in 2..ENDPOINTS_PER_SERVICE {
        let _ = writeln!(
            text,
            "      - {{ address: 127.0.1.{e}, port: 8080, weight: 0 }}"
        );
    }
    text
}

fn field(line: &str, name: &str) -> String {
    let start = line
        .find(&format!("\"{name}\":"))
        .map(|i| i + name.len() + 3)
        .unwrap_or(0);
    line[start..]
        .split([',', '}'])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn ten_thousand_services_and_one_hundred_thousand_endpoints() {
    let Some(mut env) = weft_tests::setup("capacity") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b");
    env.start_agent(&config((1, 3)));
    let applied = env
        .agent_mut()
        .wait_for_log(0, "config applied", Duration::from_secs(1));
    println!(
        "installed {} services, {} endpoints in {} ms",
        field(&applied, "services"),
        field(&applied, "backends_added"),
        field(&applied, "elapsed_ms")
    );
    assert_eq!(
        field(&applied, "written"),
        SERVICES.to_string(),
        "{applied}"
    );
    assert_eq!(
        field(&applied, "backends_added"),
        (SERVICES * ENDPOINTS_PER_SERVICE).to_string()
    );
    assert_eq!(field(&applied, "failures"), "0");

    let service: SocketAddr = "10.99.0.1:80".parse().unwrap();
    let tally = env.client(move || client::tally_tcp(service, 2000));
    assert!((share(&tally, "a") - 25.0).abs() <= 3.0, "{tally:?}");

    // Change one service's weights: only that service's table is rewritten.
    let mark = env.agent().log_mark();
    env.agent().write_config(&config((1, 0)));
    let applied = env
        .agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(10));
    println!(
        "one weight change among {SERVICES} services applied in {} ms",
        field(&applied, "elapsed_ms")
    );
    assert_eq!(field(&applied, "written"), "1", "{applied}");
    let tally = env.client(move || client::tally_tcp(service, 200));
    assert_eq!(tally.get("a"), Some(&200), "{tally:?}");
}
