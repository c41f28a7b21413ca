//! The models directory: the one every `local_path` is relative to and the runner reads (or
//! mounts). `[runner] models_dir` unless an operator set another through
//! `PUT /admin/models/base-dir`: that choice is kept in the store, so it survives restarts and
//! every instance reads it (within one reconcile period, 2 s).

use crate::store::{Collection, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The settings document holding it.
const DOC: &str = "models_base_dir";
/// Longest path accepted.
const MAX_PATH: usize = 4096;

/// Where the directory in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BaseDirSource {
    /// `[runner] models_dir`.
    Config,
    /// Set through the admin API.
    Admin,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    base_dir: PathBuf,
    updated_ms: u64,
}

/// Why a directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum BaseDirError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct BaseDir {
    configured: PathBuf,
    current: Arc<RwLock<(PathBuf, BaseDirSource)>>,
}

impl BaseDir {
    pub fn new(configured: PathBuf) -> Self {
        Self {
            current: Arc::new(RwLock::new((configured.clone(), BaseDirSource::Config))),
            configured,
        }
    }

    pub fn get(&self) -> (PathBuf, BaseDirSource) {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|_| (self.configured.clone(), BaseDirSource::Config))
    }

    fn put(&self, dir: PathBuf, source: BaseDirSource) {
        if let Ok(mut c) = self.current.write() {
            if c.0 != dir {
                tracing::info!(models_dir = %dir.display(), "models directory");
            }
            *c = (dir, source);
        }
    }

    /// Read the operator's choice from the store (none: the configured directory).
    pub async fn load(&self, store: &dyn Store) -> Result<(), StoreError> {
        match store.doc_get(Collection::Settings, DOC).await? {
            Some(doc) => match serde_json::from_slice::<Stored>(&doc) {
                Ok(s) => self.put(s.base_dir, BaseDirSource::Admin),
                Err(e) => tracing::warn!(error = %e, "unreadable models directory setting ignored"),
            },
            None => self.put(self.configured.clone(), BaseDirSource::Config),
        }
        Ok(())
    }

    /// Set the directory: an absolute path to an existing directory (symlinks resolved).
    pub async fn set(&self, store: &dyn Store, dir: &str) -> Result<PathBuf, BaseDirError> {
        let invalid = |why: &str| BaseDirError::Invalid(why.to_string());
        if dir.is_empty() {
            return Err(invalid("base_dir is required"));
        }
        if dir.len() > MAX_PATH || dir.contains('\0') {
            return Err(invalid("base_dir must be a path of at most 4096 bytes"));
        }
        if !Path::new(dir).is_absolute() {
            return Err(invalid("base_dir must be an absolute path"));
        }
        let given = PathBuf::from(dir);
        let resolved = tokio::task::spawn_blocking(move || {
            let real = given
                .canonicalize()
                .map_err(|e| format!("{}: {e}", given.display()))?;
            if real.is_dir() {
                Ok(real)
            } else {
                Err(format!("{} is not a directory", real.display()))
            }
        })
        .await
        .map_err(|e| BaseDirError::Invalid(e.to_string()))?
        .map_err(BaseDirError::Invalid)?;
        let doc = serde_json::to_vec(&Stored {
            base_dir: resolved.clone(),
            updated_ms: crate::telemetry::now_ms(),
        })
        .map_err(|e| BaseDirError::Invalid(e.to_string()))?;
        store
            .doc_put(Collection::Settings, DOC, &doc, None, None)
            .await?;
        self.put(resolved.clone(), BaseDirSource::Admin);
        Ok(resolved)
    }
}
