//! Managed model records in the store (embedded, or Valkey shared by every instance), with
//! `served_model_name` unique among them. A model's configuration (`models`, written by create
//! and PATCH) and its state (`model_states`, written by the node that runs it) are separate
//! documents, so a PATCH never undoes a state change and a state change never undoes a PATCH.

use super::record::{EngineType, ModelRecord, ModelSpec, ModelState};
use super::validate;
use crate::store::{Collection, Put, Store, StoreError};
use crate::telemetry::now_ms;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Why a model operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Invalid(String),
    #[error("model not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// A stored record cannot be read (a fault of the store, not of the request).
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, ModelError>;

/// Which models to list.
#[derive(Debug, Default)]
pub struct ModelFilter {
    /// Case-insensitive substring of the id, name, served name, repository or path.
    pub q: Option<String>,
    pub state: Option<ModelState>,
    pub engine_type: Option<EngineType>,
}

impl ModelFilter {
    fn matches(&self, m: &ModelRecord) -> bool {
        let text = self.q.as_ref().is_none_or(|q| {
            let q = q.to_lowercase();
            let s = &m.spec;
            [
                Some(&m.id),
                Some(&s.name),
                Some(&s.served_model_name),
                s.repo_id.as_ref(),
                s.local_path.as_ref(),
            ]
            .into_iter()
            .flatten()
            .any(|t| t.to_lowercase().contains(&q))
        });
        text && self.state.is_none_or(|st| m.state == st)
            && self.engine_type.is_none_or(|e| m.spec.engine_type == e)
    }
}

/// A model's configuration document.
#[derive(Serialize, Deserialize)]
struct StoredSpec {
    id: String,
    spec: ModelSpec,
    created_ms: u64,
    updated_ms: u64,
}

/// A model's state document.
#[derive(Serialize, Deserialize, Default)]
struct StoredState {
    state: ModelState,
    #[serde(default)]
    state_detail: Option<String>,
    #[serde(default)]
    node: Option<String>,
    updated_ms: u64,
}

fn record(s: StoredSpec, st: Option<StoredState>) -> ModelRecord {
    let st = st.unwrap_or_default();
    ModelRecord {
        updated_ms: s.updated_ms.max(st.updated_ms),
        id: s.id,
        spec: s.spec,
        state: st.state,
        state_detail: st.state_detail,
        node: st.node,
        created_ms: s.created_ms,
    }
}

/// The creation time of a new record: now, but later than the last record this process created
/// (lists are oldest first: two models created in one millisecond keep their order).
fn creation_ms() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    now.max(prev + 1)
}

/// Model records over the store.
#[derive(Clone)]
pub struct ModelService {
    store: Arc<dyn Store>,
    /// The models directory in force.
    pub base_dir: super::base_dir::BaseDir,
}

impl ModelService {
    pub fn new(store: Arc<dyn Store>, models_dir: PathBuf) -> Self {
        Self {
            store,
            base_dir: super::base_dir::BaseDir::new(models_dir),
        }
    }

    /// The store the records live in.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The models matching `filter`, oldest first.
    pub async fn list(&self, filter: &ModelFilter) -> Result<Vec<ModelRecord>> {
        let specs = self.store.doc_list(Collection::Models).await?;
        let mut states: std::collections::HashMap<String, StoredState> = self
            .store
            .doc_list(Collection::ModelStates)
            .await?
            .into_iter()
            .filter_map(|(id, doc)| Some((id, serde_json::from_slice(&doc).ok()?)))
            .collect();
        let mut out = Vec::with_capacity(specs.len());
        for (id, doc) in specs {
            match serde_json::from_slice::<StoredSpec>(&doc) {
                Ok(s) => {
                    let m = record(s, states.remove(&id));
                    if filter.matches(&m) {
                        out.push(m);
                    }
                }
                Err(e) => tracing::warn!(%id, error = %e, "unreadable model record skipped"),
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    pub async fn get(&self, id: &str) -> Result<ModelRecord> {
        let spec = self.get_spec(id).await?;
        let state = match self.store.doc_get(Collection::ModelStates, id).await? {
            Some(doc) => Some(serde_json::from_slice(&doc).map_err(|e| {
                ModelError::Corrupt(format!("unreadable state of model {id}: {e}"))
            })?),
            None => None,
        };
        Ok(record(spec, state))
    }

    async fn get_spec(&self, id: &str) -> Result<StoredSpec> {
        let doc = self
            .store
            .doc_get(Collection::Models, id)
            .await?
            .ok_or(ModelError::NotFound)?;
        serde_json::from_slice(&doc)
            .map_err(|e| ModelError::Corrupt(format!("unreadable model record {id}: {e}")))
    }

    /// Save a new model (state `stopped`).
    pub async fn create(&self, spec: ModelSpec) -> Result<ModelRecord> {
        self.validate(&spec).await?;
        let now = creation_ms();
        let stored = StoredSpec {
            id: format!("mdl_{}", crate::identity::generate_secret(12)),
            spec,
            created_ms: now,
            updated_ms: now,
        };
        self.write(&stored, None).await?;
        Ok(record(stored, None))
    }

    /// Apply a JSON merge patch (RFC 7386: a field set to null is cleared) to a model's
    /// configuration, and check the result as a whole. A running engine keeps its old
    /// configuration until the model is applied.
    pub async fn patch(&self, id: &str, patch: serde_json::Value) -> Result<ModelRecord> {
        let serde_json::Value::Object(changes) = patch else {
            return Err(ModelError::Invalid(
                "the body must be a JSON object of the fields to change".into(),
            ));
        };
        let mut stored = self.get_spec(id).await?;
        let mut fields = match serde_json::to_value(&stored.spec) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => return Err(ModelError::Corrupt(format!("model record {id}"))),
        };
        for (field, value) in changes {
            if value.is_null() {
                fields.remove(&field);
            } else {
                fields.insert(field, value);
            }
        }
        let spec: ModelSpec = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        self.validate(&spec).await?;
        let old_served = stored.spec.served_model_name.clone();
        stored.spec = spec;
        stored.updated_ms = now_ms();
        self.write(&stored, Some(&old_served)).await?;
        self.get(id).await
    }

    /// Record where a model is in its life, and on which node (a record deleted meanwhile stays
    /// deleted).
    pub async fn set_state(
        &self,
        id: &str,
        state: ModelState,
        detail: Option<String>,
        node: Option<&str>,
    ) -> Result<()> {
        let model = match self.get(id).await {
            Ok(m) => m,
            Err(ModelError::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        let node = node.map(str::to_string).or(model.node.clone());
        if model.state == state && model.state_detail == detail && model.node == node {
            return Ok(());
        }
        let doc = StoredState {
            state,
            state_detail: detail,
            node,
            updated_ms: now_ms(),
        };
        let bytes = serde_json::to_vec(&doc).map_err(|e| ModelError::Corrupt(e.to_string()))?;
        self.store
            .doc_put(Collection::ModelStates, id, &bytes, None, None)
            .await?;
        Ok(())
    }

    /// The models directory in force.
    pub fn models_dir(&self) -> PathBuf {
        self.base_dir.get().0
    }

    /// Check a stored configuration again (before a start: links may have changed).
    pub async fn recheck(&self, spec: &ModelSpec) -> Result<()> {
        self.validate(spec).await
    }

    /// Delete a model's record (never its files); the record as it was.
    pub async fn delete(&self, id: &str) -> Result<ModelRecord> {
        let model = self.get(id).await?;
        self.store
            .doc_delete(Collection::Models, id, Some(&model.spec.served_model_name))
            .await?;
        self.store
            .doc_delete(Collection::ModelStates, id, None)
            .await?;
        Ok(model)
    }

    /// Check a configuration (paths are resolved on the file system, off the async threads).
    async fn validate(&self, spec: &ModelSpec) -> Result<()> {
        let (spec, dir) = (spec.clone(), self.models_dir());
        tokio::task::spawn_blocking(move || validate::check(&spec, &dir))
            .await
            .map_err(|e| ModelError::Corrupt(format!("validation failed: {e}")))?
            .map_err(ModelError::Invalid)
    }

    async fn write(&self, model: &StoredSpec, old_served: Option<&str>) -> Result<()> {
        let doc = serde_json::to_vec(model).map_err(|e| ModelError::Corrupt(e.to_string()))?;
        let served = &model.spec.served_model_name;
        match self
            .store
            .doc_put(
                Collection::Models,
                &model.id,
                &doc,
                Some(served),
                old_served,
            )
            .await?
        {
            Put::Written => Ok(()),
            Put::Conflict => Err(ModelError::Conflict(format!(
                "another managed model is served as {served:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_created_in_one_millisecond_keep_their_order() {
        let times: Vec<u64> = (0..1000).map(|_| creation_ms()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }
}
