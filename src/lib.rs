//! infergate: an OpenAI-compatible L7 gateway on Pingora for fleets of vLLM, SGLang and speaches
//! servers.
//!
//! One folder per concern: `config` (the TOML schema), `proxy` (the data plane), `routing`
//! (model pools, affinity and selection), `upstream` (servers), `health` (probes and passive
//! failures), `store` (shared state), `telemetry` (metrics, TTFT and usage), `admin` (the admin
//! listener), `identity` (organizations, users, API keys), `lifecycle` (managed models: their
//! records, and the engines the gateway runs for them), `monitoring` (host, GPU, throughput
//! and engine figures), `pods` (pod providers), `tls` (the listeners' certificates), `mock` (a
//! mock vLLM server for tests, benchmarks and the demo), `serve` (process assembly), `shutdown`
//! (signals and the drain).

pub mod admin;
pub mod audit;
pub mod config;
pub mod files;
pub mod gateway;
pub mod gpu;
pub mod health;
pub mod identity;
pub mod lifecycle;
pub mod mock;
pub mod modelfiles;
pub mod monitoring;
pub mod pods;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod serve;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod usage;
