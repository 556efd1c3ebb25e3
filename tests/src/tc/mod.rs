//! The TC path under test: hand-built frames (`frame`) through the real programs and maps
//! with `BPF_PROG_TEST_RUN` (`lab`), and a forwarding node between a client and endpoints
//! in network namespaces (`topology`).

pub mod frame;
pub mod lab;
pub mod topology;
