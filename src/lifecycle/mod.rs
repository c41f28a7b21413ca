//! Managed models: models the gateway runs itself (vLLM or llama.cpp engines), defined once by
//! an operator and started, stopped and applied through the admin API (spec 000 "Models").
//! `record` is what is stored, `validate`, `guard` and `paths` decide what may be stored, and
//! `service` keeps the records in the store, shared by every instance. `supervisor` runs this
//! node's engines (`process` or `docker`), `probe` asks them how they are, `remote` carries a
//! call to the node that owns a model, and `nodes` keeps records true to what runs.

pub mod base_dir;
pub mod beat;
pub mod command;
pub mod diagnose;
pub mod docker;
pub mod dry_run;
mod engine;
pub mod error;
pub mod estimate;
pub mod flags;
pub mod guard;
pub mod logs;
pub mod nodes;
pub mod paths;
pub mod probe;
pub mod process;
pub mod record;
pub mod remote;
pub mod report;
pub mod service;
pub mod supervisor;
pub mod validate;
mod watcher;
pub mod weights;

pub use error::LifecycleError;
pub use nodes::LifecycleService;
pub use probe::{Probe, TestResult};
pub use record::{
    ArgType, EngineArg, EngineType, EnvVar, ModelRecord, ModelSpec, ModelState, Task,
};
pub use report::{Logs, Readiness, ReadinessStatus};
pub use service::{ModelError, ModelFilter, ModelService};
pub use supervisor::Lifecycle;
