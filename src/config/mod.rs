//! Configuration: the TOML schema (every key is documented in `conf/infergate.toml`) and its loading.

mod load;
mod schema;

pub use load::{load_file, parse_str, ConfigError};
pub use schema::*;
