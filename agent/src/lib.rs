//! weft: an eBPF-accelerated node-level L4 service mesh agent.
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod logging;
pub mod plan;
pub mod source;
