//! The audit log: one record per admin change (every POST, PUT, PATCH and DELETE of the admin
//! API by an authenticated caller, refused ones included), with who made it, what and on what,
//! and how it ended. Records are handed off the request to [`AuditRecorder`] (never blocking
//! the change, never failing it) and written to the store by [`AuditService`]; they are kept
//! `[audit] retention_hours` and queried with `GET /admin/audit`.

pub mod actions;
pub mod query;
mod record;
mod recorder;

pub use record::{AuditRecord, Outcome};
pub use recorder::{AuditRecorder, AuditService};
