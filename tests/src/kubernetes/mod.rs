//! Kubernetes for the end-to-end tests: a fake API server speaking the list/watch protocol.

pub mod fake_api;
