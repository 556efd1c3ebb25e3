//! The Kubernetes scenarios of `kubernetes.rs` against a real cluster, opt-in:
//! `cargo xtask test --cluster` with `KUBECONFIG` (or `~/.kube/config`) naming a cluster
//! where you may create a namespace with Services and EndpointSlices, and `kubectl` on
//! PATH. The agent runs on this machine (as root, in a network namespace of the test's
//! own) and reaches the API server through a relay the test cuts to take it away. Each test
//! works in a namespace of its own, deleted at the end.

use weft_tests::kubernetes::{real::RealCluster, scenarios};

fn cluster(env: &weft_tests::Env) -> RealCluster {
    RealCluster::connect(
        &env.netns,
        &std::env::temp_dir().join(format!("{}-kube", env.netns.name)),
    )
}

#[test]
#[ignore = "needs a real cluster: cargo xtask test --cluster"]
fn endpoint_slices_drive_the_kernel() {
    let Some(mut env) = weft_tests::setup("k8s-real-slices") else {
        return;
    };
    let cluster = cluster(&env);
    scenarios::slices_drive_the_kernel(&mut env, &cluster);
}

#[test]
#[ignore = "needs a real cluster: cargo xtask test --cluster"]
fn the_api_server_gone_for_10_s_fails_no_connect() {
    let Some(mut env) = weft_tests::setup("k8s-real-gone") else {
        return;
    };
    let mut cluster = cluster(&env);
    scenarios::api_server_gone_keeps_traffic_flowing(&mut env, &mut cluster);
}

#[test]
#[ignore = "needs a real cluster: cargo xtask test --cluster"]
fn an_unreachable_api_server_at_start_keeps_the_pinned_state_serving() {
    let Some(mut env) = weft_tests::setup("k8s-real-unreach") else {
        return;
    };
    let mut cluster = cluster(&env);
    scenarios::unreachable_at_start(&mut env, &mut cluster);
}

#[test]
#[ignore = "needs a real cluster: cargo xtask test --cluster"]
fn a_name_from_a_file_and_a_service_is_a_conflict_naming_both() {
    let Some(mut env) = weft_tests::setup("k8s-real-conflict") else {
        return;
    };
    let cluster = cluster(&env);
    scenarios::file_and_kubernetes_conflict(&mut env, &cluster);
}
