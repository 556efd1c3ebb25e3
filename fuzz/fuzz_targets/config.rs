//! Any bytes as a config file: parsing and validation either accept them or reject them
//! with an error naming something, never panic; what they accept holds what validation
//! promises the rest of the agent (unique names, frontends and endpoints, bounded rules).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use weft::config::Config;

fuzz_target!(|data: &[u8]| {
    let config = match Config::from_bytes(data) {
        Ok(config) => config,
        Err(error) => {
            assert!(!error.to_string().is_empty(), "an error that says nothing");
            return;
        }
    };
    let mut names = HashSet::new();
    let mut frontends = HashSet::new();
    for service in &config.services {
        assert!(
            names.insert(service.name.clone()),
            "duplicate name accepted"
        );
        assert!(
            frontends.insert(service.frontend),
            "duplicate frontend accepted"
        );
        let mut endpoints = HashSet::new();
        for endpoint in &service.endpoints {
            assert!(
                endpoints.insert(endpoint.address),
                "duplicate endpoint accepted in {}",
                service.name
            );
        }
        assert!(
            service.governance.allow.len() <= weft_common::MAX_ALLOW_RULES,
            "more allow rules than the kernel holds"
        );
    }
});
