//! The TC programs under `BPF_PROG_TEST_RUN`: hand-built frames (`frame`) through the real
//! programs and maps (`lab`).

pub mod frame;
pub mod lab;
