//! Managed models: models the gateway runs itself (vLLM or llama.cpp engines), defined once by
//! an operator and started, stopped and applied through the admin API (spec 000 "Models").
//! `record` is what is stored, `validate`, `guard` and `paths` decide what may be stored, and
//! `service` keeps the records in the store, shared by every instance.

pub mod command;
pub mod diagnose;
pub mod docker;
pub mod guard;
pub mod logs;
pub mod paths;
pub mod process;
pub mod record;
pub mod service;
pub mod supervisor;
pub mod validate;
pub mod weights;

pub use record::{
    ArgType, EngineArg, EngineType, EnvVar, ModelRecord, ModelSpec, ModelState, Task,
};
pub use service::{ModelError, ModelFilter, ModelService};
pub use supervisor::{Lifecycle, LifecycleError, LifecycleService, Probe, TestResult};
