//! Audit records in Valkey: one LIST per day of the records' own time, `<p>:audit:<unix day>`,
//! each entry a JSON record, expiring `[audit] retention_hours` after its day ends. Written
//! like usage (a script appends each chunk of a batch once), so every instance's records are in
//! the same lists and a record written late (after an outage) lands in its own day. Days are
//! separate keys: a cluster spreads them over its nodes.

use super::usage::{append_once, Buckets};
use super::ValkeyStore;
use crate::audit::AuditRecord;
use crate::store::StoreError;
use std::collections::BTreeMap;

pub const DAY_MS: u64 = 24 * 3_600_000;

pub async fn append(
    store: &ValkeyStore,
    batch: &str,
    records: &[AuditRecord],
) -> Result<(), StoreError> {
    let now = crate::telemetry::now_ms();
    let mut by_day: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    for r in records {
        let json = serde_json::to_vec(r).map_err(|e| StoreError::Invalid(e.to_string()))?;
        by_day.entry(r.ts_ms / DAY_MS).or_default().push(json);
    }
    for (day, entries) in by_day {
        let expires_ms = ((day + 1) * DAY_MS)
            .saturating_add(store.audit_retention_ms)
            .saturating_sub(now);
        if expires_ms == 0 {
            continue; // already past the retention
        }
        let key = store.keys.audit(day);
        append_once(store, &key, batch, &entries, expires_ms, "audit").await?;
    }
    Ok(())
}

pub async fn scan(
    store: &ValkeyStore,
    from_ms: u64,
    to_ms: u64,
    max: usize,
) -> Result<Vec<AuditRecord>, StoreError> {
    let buckets = Buckets {
        span_ms: DAY_MS,
        retention_ms: store.audit_retention_ms,
        kind: "audit",
    };
    buckets
        .scan(
            store,
            from_ms,
            to_ms,
            |day| store.keys.audit(day),
            |r: &AuditRecord| r.ts_ms,
            || StoreError::TooManyAudit(max),
            max,
        )
        .await
}
