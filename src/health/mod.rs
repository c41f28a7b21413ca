//! Server health: per-server state fed by active probes and by passive failures seen on the data plane.

mod probe;
mod state;

pub use probe::{server_client, HealthChecker, ProbeSetupError};
pub use state::{HealthPolicy, HealthSnapshot, HealthState, Source, Transition};
