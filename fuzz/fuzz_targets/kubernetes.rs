//! Any Service and EndpointSlice JSON (the two documents separated by a zero byte), as the
//! API server could send them: those that deserialize map to weft services or to problems
//! the agent reports, never a panic; what maps is what validation would accept (a name,
//! one frontend per service, unique endpoints).
#![no_main]

use std::collections::HashSet;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use libfuzzer_sys::fuzz_target;
use weft::source::kubernetes::mapping::{ServiceFacts, SliceFacts, specs};

fuzz_target!(|data: &[u8]| {
    let mut documents = data.splitn(2, |&b| b == 0);
    let service = documents.next().unwrap_or_default();
    let slice = documents.next().unwrap_or_default();
    let Ok(service) = serde_json::from_slice::<Service>(service) else {
        return;
    };
    let Some(facts) = ServiceFacts::of(&service) else {
        return;
    };
    let slices: Vec<SliceFacts> = serde_json::from_slice::<EndpointSlice>(slice)
        .ok()
        .map(|s| SliceFacts::of(&s, "node-a"))
        .into_iter()
        .collect();
    let mut frontends = HashSet::new();
    for spec in specs(&facts, &slices.iter().collect::<Vec<_>>()) {
        assert!(!spec.name.is_empty(), "a service without a name");
        assert!(
            frontends.insert(spec.frontend),
            "two services on one frontend"
        );
        let mut endpoints = HashSet::new();
        for endpoint in &spec.endpoints {
            assert!(endpoints.insert(endpoint.address), "a duplicate endpoint");
        }
    }
});
