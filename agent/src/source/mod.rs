//! Where services come from. Today: a file; the Kubernetes source will sit beside it.
pub mod file;
