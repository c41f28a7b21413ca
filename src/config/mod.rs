//! Configuration: the TOML schema (every key is documented in `conf/infergate.toml`) and its loading.

mod load;
mod running;
mod schema;

pub use load::{load_file, parse_str, ConfigError};
pub use running::Running;
pub use schema::*;
