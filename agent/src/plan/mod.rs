//! Desired state → what the kernel maps must hold. Pure functions, no I/O: the datapath
//! executes what `diff` returns, in the order it returns it.

pub mod desired;
pub mod diff;
pub mod maglev;
pub mod resolve;

pub use desired::{Desired, DesiredService, desired_state};
pub use diff::{Changes, Installed, InstalledService, ServiceUpdate, diff};
