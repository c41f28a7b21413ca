//! End-to-end tests: the real gateway process in front of real mock vLLM servers on loopback.

mod fake_docker;
mod fake_hub;
mod fake_runpod;
mod harness;
mod load;
mod wire;

mod admin;
mod audit;
mod chaos;
mod cli;
mod differential;
mod drain;
mod errors;
mod health;
mod http1;
mod identity;
mod lifecycle;
mod lifecycle_nodes;
mod limits;
mod model_files;
mod models;
mod monitoring;
mod prefix;
mod reload;
mod routing;
mod sim;
mod slow_clients;
mod smuggling;
mod streaming;
mod tls;
mod upgrade;
mod upstreams;
mod usage;
mod valkey;
