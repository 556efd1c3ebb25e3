//! weft: an eBPF-accelerated node-level L4 service mesh agent.
pub mod api;
mod chain;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod layout;
pub mod logging;
pub mod plan;
pub mod source;
pub mod stats;
pub mod store;

#[cfg(test)]
mod pipeline_tests;
