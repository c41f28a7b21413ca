//! Identity records (organizations, users, API keys) and managed models as JSON documents by id,
//! with an optional
//! unique name per document. The embedded store keeps them in memory; the Valkey store in one
//! hash per collection (see `valkey/docs.rs`).

use super::StoreError;
use std::collections::HashMap;
use std::sync::Mutex;

/// A collection of documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collection {
    Orgs,
    Users,
    Keys,
    /// Managed models' configurations (`lifecycle`).
    Models,
    /// Managed models' states, apart from their configurations so that neither write undoes
    /// the other.
    ModelStates,
    /// Settings changed through the admin API (the models directory).
    Settings,
}

impl Collection {
    pub const ALL: [Collection; 6] = [
        Collection::Orgs,
        Collection::Users,
        Collection::Keys,
        Collection::Models,
        Collection::ModelStates,
        Collection::Settings,
    ];

    /// Whether a write is announced to every instance (`doc_changes`): the identity documents,
    /// which every instance caches. Model records and settings are read from the store when
    /// needed, so their writes (a state change at every step of a start) reload nothing.
    pub fn announced(self) -> bool {
        matches!(
            self,
            Collection::Orgs | Collection::Users | Collection::Keys
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Collection::Orgs => "orgs",
            Collection::Users => "users",
            Collection::Keys => "keys",
            Collection::Models => "models",
            Collection::ModelStates => "model_states",
            Collection::Settings => "settings",
        }
    }
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Written,
    /// The unique name belongs to another document; nothing was written.
    Conflict,
}

/// The documents of the embedded store.
pub struct MemoryDocs {
    inner: Mutex<Inner>,
    changes: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    docs: HashMap<(Collection, String), Vec<u8>>,
    /// (collection, unique name) -> id
    unique: HashMap<(Collection, String), String>,
}

impl Default for MemoryDocs {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl MemoryDocs {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Invalid("document store poisoned".into()))
    }

    pub fn list(&self, c: Collection) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .docs
            .iter()
            .filter(|((col, _), _)| *col == c)
            .map(|((_, id), doc)| (id.clone(), doc.clone()))
            .collect())
    }

    pub fn get(&self, c: Collection, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.docs.get(&(c, id.to_string())).cloned())
    }

    pub fn put(
        &self,
        c: Collection,
        id: &str,
        doc: &[u8],
        unique: Option<&str>,
        old_unique: Option<&str>,
    ) -> Result<Put, StoreError> {
        {
            let mut inner = self.lock()?;
            if let Some(u) = unique {
                match inner.unique.get(&(c, u.to_string())) {
                    Some(owner) if owner != id => return Ok(Put::Conflict),
                    _ => {}
                }
                if let Some(old) = old_unique.filter(|o| *o != u) {
                    let key = (c, old.to_string());
                    if inner.unique.get(&key).is_some_and(|owner| owner == id) {
                        inner.unique.remove(&key);
                    }
                }
                inner.unique.insert((c, u.to_string()), id.to_string());
            }
            inner.docs.insert((c, id.to_string()), doc.to_vec());
        }
        if c.announced() {
            self.changes.send_modify(|v| *v += 1);
        }
        Ok(Put::Written)
    }

    pub fn delete(
        &self,
        c: Collection,
        id: &str,
        unique: Option<&str>,
    ) -> Result<bool, StoreError> {
        let existed = {
            let mut inner = self.lock()?;
            if let Some(u) = unique {
                let key = (c, u.to_string());
                if inner.unique.get(&key).is_some_and(|owner| owner == id) {
                    inner.unique.remove(&key);
                }
            }
            inner.docs.remove(&(c, id.to_string())).is_some()
        };
        if existed && c.announced() {
            self.changes.send_modify(|v| *v += 1);
        }
        Ok(existed)
    }

    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identity_writes_are_announced() {
        let d = MemoryDocs::default();
        let rx = d.changes();
        d.put(Collection::ModelStates, "m1", b"{}", None, None)
            .unwrap();
        d.put(Collection::Settings, "s", b"{}", None, None).unwrap();
        assert!(d.delete(Collection::ModelStates, "m1", None).unwrap());
        assert!(!rx.has_changed().unwrap());
        d.put(Collection::Keys, "k1", b"{}", None, None).unwrap();
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn unique_names_and_renames() {
        let d = MemoryDocs::default();
        let rx = d.changes();
        assert_eq!(
            d.put(Collection::Orgs, "o1", b"{}", Some("acme"), None)
                .unwrap(),
            Put::Written
        );
        assert_eq!(
            d.put(Collection::Orgs, "o2", b"{}", Some("acme"), None)
                .unwrap(),
            Put::Conflict
        );
        // The same name in another collection is fine.
        assert_eq!(
            d.put(Collection::Users, "u1", b"{}", Some("acme"), None)
                .unwrap(),
            Put::Written
        );
        // Rename o1: its old name is free again.
        assert_eq!(
            d.put(
                Collection::Orgs,
                "o1",
                b"{\"n\":1}",
                Some("acme2"),
                Some("acme")
            )
            .unwrap(),
            Put::Written
        );
        assert_eq!(
            d.put(Collection::Orgs, "o2", b"{}", Some("acme"), None)
                .unwrap(),
            Put::Written
        );
        assert_eq!(
            d.get(Collection::Orgs, "o1").unwrap().unwrap(),
            b"{\"n\":1}"
        );
        assert_eq!(d.list(Collection::Orgs).unwrap().len(), 2);
        assert!(d.delete(Collection::Orgs, "o2", Some("acme")).unwrap());
        assert!(!d.delete(Collection::Orgs, "o2", Some("acme")).unwrap());
        assert_eq!(
            d.put(Collection::Orgs, "o3", b"{}", Some("acme"), None)
                .unwrap(),
            Put::Written
        );
        assert!(*rx.borrow() >= 6, "every write is announced");
    }
}
