//! The Kubernetes source end to end: the real agent with `--kubernetes` against an API
//! server speaking the list/watch protocol over HTTP(S) in the test's network namespace, real
//! backends, real connects to the cluster IPs. The same scenarios run against a real
//! cluster in `kubernetes_cluster.rs` (opt-in).

use weft_tests::kubernetes::{FakeCluster, scenarios};

fn dir(env: &weft_tests::Env) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-kube", env.netns.name))
}

fn fake(env: &weft_tests::Env) -> FakeCluster {
    FakeCluster::start(&env.netns, &dir(env))
}

#[test]
fn endpoint_slices_drive_the_kernel() {
    let Some(mut env) = weft_tests::setup("k8s-slices") else {
        return;
    };
    // Over TLS, as in a cluster: the agent's rustls client with the kubeconfig's CA.
    let cluster = FakeCluster::start_tls(&env.netns, &dir(&env));
    scenarios::slices_drive_the_kernel(&mut env, &cluster);
}

#[test]
fn the_api_server_gone_for_10_s_fails_no_connect() {
    let Some(mut env) = weft_tests::setup("k8s-gone") else {
        return;
    };
    let mut cluster = fake(&env);
    scenarios::api_server_gone_keeps_traffic_flowing(&mut env, &mut cluster);
}

#[test]
fn an_unreachable_api_server_at_start_keeps_the_pinned_state_serving() {
    let Some(mut env) = weft_tests::setup("k8s-unreachable") else {
        return;
    };
    let mut cluster = fake(&env);
    scenarios::unreachable_at_start(&mut env, &mut cluster);
}

#[test]
fn a_name_from_a_file_and_a_service_is_a_conflict_naming_both() {
    let Some(mut env) = weft_tests::setup("k8s-conflict") else {
        return;
    };
    let cluster = fake(&env);
    scenarios::file_and_kubernetes_conflict(&mut env, &cluster);
}
