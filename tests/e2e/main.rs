//! End-to-end tests: the real gateway process in front of real mock vLLM servers on loopback.

mod harness;

mod cli;
mod errors;
mod health;
mod routing;
mod streaming;
mod tls;
mod valkey;
