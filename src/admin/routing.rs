//! `GET routing`: each routed model's policy and, for the models routed by prefix, their
//! index's figures (size, blocks per server, evictions).

use super::error::ErrorBody;
use super::AdminState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// The `[routing]` settings and every routed model's policy.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoutingReport {
    /// The default policy: `affinity`, `prefix` or `least_inflight`.
    pub policy: String,
    /// Bytes of rendered prompt per indexed block.
    pub block_bytes: usize,
    /// Blocks of a prompt indexed at most.
    pub max_blocks: usize,
    /// A server's KV cache, in tokens, as configured.
    pub server_cache_tokens: u64,
    /// The longest-prefix server is skipped when loaded over the least loaded by more than
    /// `balance_abs` requests in flight and by more than the factor `balance_rel`.
    pub balance_abs: u32,
    pub balance_rel: f64,
    /// A server over this factor of its even share of the pool's recent requests is skipped
    /// while it has more in flight than the least loaded (0: no bound).
    pub balance_share: f64,
    /// Other gateway instances whose load on the servers counts in this one's choices now
    /// (their snapshot is under 500 ms old); null without a shared store.
    pub load_shared_by_instances: Option<usize>,
    /// Every model with a pool, by name.
    pub models: Vec<ModelRouting>,
}

/// One model's routing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelRouting {
    pub model: String,
    pub policy: String,
    /// Servers in the pool.
    pub servers: usize,
    /// The prefix index, when the policy is `prefix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexReport>,
}

/// A model's prefix index.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IndexReport {
    /// Entries of the table (one block hash each) and its memory.
    pub entries: usize,
    pub bytes: usize,
    /// Blocks each server is taken to hold at most (its KV cache, in blocks).
    pub capacity_blocks: usize,
    /// Blocks held, summed over the servers.
    pub blocks: usize,
    /// Blocks dropped to keep servers within their capacity or for age, since the index was
    /// made.
    pub evicted: u64,
    /// Blocks lost to a full bucket of the table: entries given to other blocks, or blocks
    /// left unrecorded when every entry of their bucket was written that same millisecond.
    pub replaced: u64,
    /// Each indexed server: its slot and blocks.
    pub servers: Vec<IndexedServer>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IndexedServer {
    pub server: String,
    pub slot: usize,
    pub blocks: usize,
    pub healthy: bool,
    /// Requests of the model per second this instance sent it recently (the average the
    /// share bound reads).
    pub requests_per_s: f64,
    /// Prompt blocks sent to it and not prefilled yet, as this instance estimates them (the
    /// queue the choice among equal holders reads).
    pub queued_prefill_blocks: i64,
    /// Requests the other instances have in flight on it, as they last shared them (0
    /// without a shared store).
    pub others_inflight: i64,
    /// Prompt blocks the other instances sent it and it has not prefilled yet, as they last
    /// shared them (added to `queued_prefill_blocks` in the choice).
    pub others_queued_prefill_blocks: i64,
    /// Milliseconds per queued block, learnt from its streamed answers (null until one was
    /// seen): when an answer that is not streamed leaves the queue.
    pub prefill_ms_per_block: Option<f64>,
}

/// Get each model's routing policy and prefix index.
#[utoipa::path(get, path = "/api/ai/v1/admin/routing", tag = "Routing",
    responses(
        (status = 200, description = "Policies and prefix indexes", body = RoutingReport),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing the ai_admin role", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [], "api_secret" = [])))]
pub async fn report(State(s): State<Arc<AdminState>>) -> Json<RoutingReport> {
    let table = s.gw.table.load_full();
    let r = table.routing();
    let mut models: Vec<ModelRouting> = table
        .pools()
        .map(|pool| ModelRouting {
            model: pool.model.to_string(),
            policy: pool.policy.as_str().into(),
            servers: pool.members.len(),
            index: pool.prefix.as_ref().map(|p| {
                let ix = &p.index;
                IndexReport {
                    entries: ix.entries(),
                    bytes: ix.bytes(),
                    capacity_blocks: ix.capacity(),
                    blocks: ix.held_total(),
                    evicted: ix.evicted(),
                    replaced: ix.replaced(),
                    servers: p
                        .servers()
                        .into_iter()
                        .map(|(slot, id)| {
                            let member = pool.member(&id).map(|(_, m)| m);
                            IndexedServer {
                                healthy: member.is_some_and(|m| m.backend.is_healthy()),
                                requests_per_s: member.map_or(0.0, |m| {
                                    (f64::from(m.rate.get()) * 1000.0).round() / 1000.0
                                }),
                                queued_prefill_blocks: member
                                    .map_or(0, |m| m.backend.own_prefill_queue()),
                                others_inflight: member.map_or(0, |m| m.backend.others.inflight()),
                                others_queued_prefill_blocks: member
                                    .map_or(0, |m| m.backend.others.queued_prefill()),
                                prefill_ms_per_block: member
                                    .and_then(|m| m.backend.prefill_pace.ms_per_block()),
                                server: id.to_string(),
                                slot,
                                blocks: ix.held(slot),
                            }
                        })
                        .collect(),
                }
            }),
        })
        .collect();
    models.sort_by(|a, b| a.model.cmp(&b.model));
    Json(RoutingReport {
        policy: r.policy.as_str().into(),
        block_bytes: r.block_bytes,
        max_blocks: r.max_blocks,
        server_cache_tokens: r.server_cache_tokens,
        balance_abs: r.balance_abs,
        balance_rel: r.balance_rel,
        balance_share: r.balance_share,
        load_shared_by_instances: s.gw.routing_share.as_ref().map(|s| s.loads.instances()),
        models,
    })
}
