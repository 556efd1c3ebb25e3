//! Helpers for weft's privileged end-to-end tests.
