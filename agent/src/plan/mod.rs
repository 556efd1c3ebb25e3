//! What the kernel should hold for a service: its key, table size and members with their
//! effective weights, and the Maglev table they make. Pure functions, no I/O; the datapath
//! writes what these return.

pub mod maglev;
pub mod policy;
mod table;

pub use table::{Member, ServicePlan, TableInputs, build_in_batches, build_tables};
