//! Creating, changing and removing organizations, users and keys, with validation, unique
//! names and the rules that tie them together (an org or user still referenced is only
//! deleted with `cascade`).

use super::model::{ApiKey, Org, User};
use super::scope::Scopes;
use super::token::generate_secret;
use crate::store::{Collection, Put, Store, StoreError};
use crate::telemetry::now_ms;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

const MAX_NAME: usize = 128;
const MAX_TEXT: usize = 1024;
const SECRET_LEN: usize = 40;

/// Why an identity operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// A stored document cannot be read (a fault of the store, not of the request).
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, IdentityError>;

/// Changes to an organization (absent fields stay).
#[derive(Debug, Default)]
pub struct OrgPatch {
    pub name: Option<String>,
    /// `Some(None)` clears it.
    pub description: Option<Option<String>>,
}

/// Changes to a user (absent fields stay).
#[derive(Debug, Default)]
pub struct UserPatch {
    pub name: Option<String>,
    pub email: Option<Option<String>>,
    pub org_id: Option<Option<String>>,
}

/// A key to create.
#[derive(Debug, Default)]
pub struct CreateKey {
    pub name: Option<String>,
    pub scopes: Option<Scopes>,
    pub roles: Vec<String>,
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    pub expires_ms: Option<u64>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// A created key and its token, shown once.
#[derive(Debug)]
pub struct NewKey {
    pub key: ApiKey,
    pub token: String,
}

/// Which keys to list.
#[derive(Debug, Default)]
pub struct KeyFilter {
    pub org_id: Option<String>,
    pub user_id: Option<String>,
    /// Case-insensitive substring of the id or name.
    pub q: Option<String>,
}

/// Identity operations over the store.
#[derive(Clone)]
pub struct IdentityService {
    store: Arc<dyn Store>,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", generate_secret(16))
}

/// A trimmed name of 1 to 128 characters without control characters.
pub fn check_name(what: &str, name: &str) -> Result<String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > MAX_NAME || n.chars().any(char::is_control) {
        return Err(IdentityError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME} characters without control characters"
        )));
    }
    Ok(n.to_string())
}

fn check_text(what: &str, text: Option<String>) -> Result<Option<String>> {
    match text {
        Some(t)
            if t.chars().count() > MAX_TEXT || t.chars().any(|c| c.is_control() && c != '\n') =>
        {
            Err(IdentityError::Invalid(format!(
                "{what} must be at most {MAX_TEXT} characters"
            )))
        }
        t => Ok(t.filter(|t| !t.trim().is_empty())),
    }
}

fn check_email(email: Option<String>) -> Result<Option<String>> {
    match email {
        None => Ok(None),
        Some(e) => {
            let e = e.trim().to_string();
            let ok = e.len() <= 254
                && e.split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                && !e.chars().any(|c| c.is_whitespace() || c.is_control());
            if ok {
                Ok(Some(e))
            } else {
                Err(IdentityError::Invalid(format!(
                    "email {e:?} is not an address"
                )))
            }
        }
    }
}

fn check_role(role: &str) -> Result<()> {
    let ok = (1..=64).contains(&role.len())
        && role.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b':')
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Invalid(format!(
            "role {role:?} must be 1 to 64 of a-z 0-9 _ - :"
        )))
    }
}

impl IdentityService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    async fn all<T: DeserializeOwned>(&self, c: Collection) -> Result<Vec<T>> {
        let docs = self.store.doc_list(c).await?;
        let mut out = Vec::with_capacity(docs.len());
        for (id, doc) in docs {
            match serde_json::from_slice(&doc) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(collection = c.as_str(), %id, error = %e, "unreadable document skipped")
                }
            }
        }
        Ok(out)
    }

    async fn one<T: DeserializeOwned>(
        &self,
        c: Collection,
        id: &str,
        what: &'static str,
    ) -> Result<T> {
        let doc = self
            .store
            .doc_get(c, id)
            .await?
            .ok_or(IdentityError::NotFound(what))?;
        serde_json::from_slice(&doc).map_err(|e| {
            IdentityError::Store(StoreError::Invalid(format!("unreadable {what}: {e}")))
        })
    }

    async fn put<T: Serialize>(
        &self,
        c: Collection,
        id: &str,
        doc: &T,
        unique: Option<&str>,
        old_unique: Option<&str>,
        conflict: impl FnOnce() -> String,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        match self
            .store
            .doc_put(c, id, &bytes, unique, old_unique)
            .await?
        {
            Put::Written => Ok(()),
            Put::Conflict => Err(IdentityError::Conflict(conflict())),
        }
    }

    // --- organizations ---

    pub async fn orgs(&self) -> Result<Vec<Org>> {
        let mut v: Vec<Org> = self.all(Collection::Orgs).await?;
        v.sort_by_key(|o| o.name.to_lowercase());
        Ok(v)
    }

    pub async fn org(&self, id: &str) -> Result<Org> {
        self.one(Collection::Orgs, id, "organization").await
    }

    pub async fn create_org(&self, name: &str, description: Option<String>) -> Result<Org> {
        let name = check_name("name", name)?;
        let now = now_ms();
        let org = Org {
            id: new_id("org"),
            description: check_text("description", description)?,
            created_ms: now,
            updated_ms: now,
            name,
        };
        let unique = Org::unique_name(&org.name);
        self.put(Collection::Orgs, &org.id, &org, Some(&unique), None, || {
            format!("an organization named {:?} exists", org.name)
        })
        .await?;
        Ok(org)
    }

    pub async fn patch_org(&self, id: &str, patch: OrgPatch) -> Result<Org> {
        let mut org = self.org(id).await?;
        let old_unique = Org::unique_name(&org.name);
        if let Some(name) = patch.name {
            org.name = check_name("name", &name)?;
        }
        if let Some(d) = patch.description {
            org.description = check_text("description", d)?;
        }
        org.updated_ms = now_ms();
        let unique = Org::unique_name(&org.name);
        self.put(
            Collection::Orgs,
            id,
            &org,
            Some(&unique),
            Some(&old_unique),
            || format!("an organization named {:?} exists", org.name),
        )
        .await?;
        Ok(org)
    }

    /// Delete an organization. With users or live keys it is refused unless `cascade`, which
    /// deletes its users and revokes its keys (and theirs). Returns (users deleted, keys revoked).
    pub async fn delete_org(&self, id: &str, cascade: bool) -> Result<(usize, usize)> {
        let org = self.org(id).await?;
        let users: Vec<User> = self
            .all::<User>(Collection::Users)
            .await?
            .into_iter()
            .filter(|u| u.org_id.as_deref() == Some(id))
            .collect();
        let keys: Vec<ApiKey> = self
            .all::<ApiKey>(Collection::Keys)
            .await?
            .into_iter()
            .filter(|k| k.revoked_ms.is_none())
            .filter(|k| {
                k.org_id.as_deref() == Some(id)
                    || k.user_id
                        .as_deref()
                        .is_some_and(|u| users.iter().any(|x| x.id == u))
            })
            .collect();
        if !cascade && (!users.is_empty() || !keys.is_empty()) {
            return Err(IdentityError::Conflict(format!(
                "the organization has {} users and {} live keys: delete them first, or pass cascade=true",
                users.len(),
                keys.len()
            )));
        }
        for k in &keys {
            self.revoke_key(&k.id).await?;
        }
        for u in &users {
            let unique = User::unique_name(u.org_id.as_deref(), &u.name);
            self.store
                .doc_delete(Collection::Users, &u.id, Some(&unique))
                .await?;
        }
        self.store
            .doc_delete(Collection::Orgs, id, Some(&Org::unique_name(&org.name)))
            .await?;
        Ok((users.len(), keys.len()))
    }

    // --- users ---

    pub async fn users(&self) -> Result<Vec<User>> {
        let mut v: Vec<User> = self.all(Collection::Users).await?;
        v.sort_by(|a, b| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.id.cmp(&b.id))
        });
        Ok(v)
    }

    pub async fn user(&self, id: &str) -> Result<User> {
        self.one(Collection::Users, id, "user").await
    }

    async fn check_org(&self, org_id: &Option<String>) -> Result<()> {
        if let Some(o) = org_id {
            match self.org(o).await {
                Err(IdentityError::NotFound(_)) => {
                    return Err(IdentityError::Invalid(format!(
                        "organization {o:?} does not exist"
                    )))
                }
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    pub async fn create_user(
        &self,
        name: &str,
        email: Option<String>,
        org_id: Option<String>,
    ) -> Result<User> {
        let name = check_name("name", name)?;
        self.check_org(&org_id).await?;
        let now = now_ms();
        let user = User {
            id: new_id("usr"),
            email: check_email(email)?,
            org_id,
            created_ms: now,
            updated_ms: now,
            name,
        };
        let unique = User::unique_name(user.org_id.as_deref(), &user.name);
        self.put(
            Collection::Users,
            &user.id,
            &user,
            Some(&unique),
            None,
            || format!("a user named {:?} exists in this organization", user.name),
        )
        .await?;
        Ok(user)
    }

    pub async fn patch_user(&self, id: &str, patch: UserPatch) -> Result<User> {
        let mut user = self.user(id).await?;
        let old_unique = User::unique_name(user.org_id.as_deref(), &user.name);
        if let Some(name) = patch.name {
            user.name = check_name("name", &name)?;
        }
        if let Some(email) = patch.email {
            user.email = check_email(email)?;
        }
        if let Some(org_id) = patch.org_id {
            self.check_org(&org_id).await?;
            user.org_id = org_id;
        }
        user.updated_ms = now_ms();
        let unique = User::unique_name(user.org_id.as_deref(), &user.name);
        self.put(
            Collection::Users,
            id,
            &user,
            Some(&unique),
            Some(&old_unique),
            || format!("a user named {:?} exists in this organization", user.name),
        )
        .await?;
        Ok(user)
    }

    /// Delete a user; with live keys it is refused unless `cascade`, which revokes them.
    /// Returns the number of keys revoked.
    pub async fn delete_user(&self, id: &str, cascade: bool) -> Result<usize> {
        let user = self.user(id).await?;
        let keys: Vec<ApiKey> = self
            .all::<ApiKey>(Collection::Keys)
            .await?
            .into_iter()
            .filter(|k| k.revoked_ms.is_none() && k.user_id.as_deref() == Some(id))
            .collect();
        if !cascade && !keys.is_empty() {
            return Err(IdentityError::Conflict(format!(
                "the user has {} live keys: revoke them first, or pass cascade=true",
                keys.len()
            )));
        }
        for k in &keys {
            self.revoke_key(&k.id).await?;
        }
        let unique = User::unique_name(user.org_id.as_deref(), &user.name);
        self.store
            .doc_delete(Collection::Users, id, Some(&unique))
            .await?;
        Ok(keys.len())
    }

    // --- keys ---

    /// Keys matching `filter`, newest first.
    pub async fn keys(&self, filter: &KeyFilter) -> Result<Vec<ApiKey>> {
        let q = filter.q.as_ref().map(|q| q.to_lowercase());
        let mut v: Vec<ApiKey> = self
            .all::<ApiKey>(Collection::Keys)
            .await?
            .into_iter()
            .filter(|k| {
                filter
                    .org_id
                    .as_ref()
                    .is_none_or(|o| k.org_id.as_ref() == Some(o))
            })
            .filter(|k| {
                filter
                    .user_id
                    .as_ref()
                    .is_none_or(|u| k.user_id.as_ref() == Some(u))
            })
            .filter(|k| {
                q.as_ref().is_none_or(|q| {
                    k.id.to_lowercase().contains(q)
                        || k.name
                            .as_ref()
                            .is_some_and(|n| n.to_lowercase().contains(q))
                })
            })
            .collect();
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    pub async fn key(&self, id: &str) -> Result<ApiKey> {
        self.one(Collection::Keys, id, "key").await
    }

    /// Every key (for the key cache).
    pub async fn all_keys(&self) -> Result<Vec<ApiKey>> {
        self.all(Collection::Keys).await
    }

    pub async fn create_key(&self, req: CreateKey) -> Result<NewKey> {
        let name = match req.name {
            Some(n) => Some(check_name("name", &n)?),
            None => None,
        };
        for r in &req.roles {
            check_role(r)?;
        }
        let mut org_id = req.org_id;
        if let Some(u) = &req.user_id {
            let user = match self.user(u).await {
                Err(IdentityError::NotFound(_)) => {
                    return Err(IdentityError::Invalid(format!("user {u:?} does not exist")))
                }
                r => r?,
            };
            match (&org_id, &user.org_id) {
                (Some(given), Some(own)) if given != own => {
                    return Err(IdentityError::Invalid(format!(
                        "user {u:?} belongs to organization {own:?}, not {given:?}"
                    )))
                }
                (None, Some(own)) => org_id = Some(own.clone()),
                _ => {}
            }
        }
        self.check_org(&org_id).await?;
        let now = now_ms();
        if req.expires_ms.is_some_and(|t| t <= now) {
            return Err(IdentityError::Invalid(
                "expires_at must be in the future".into(),
            ));
        }
        if req.rpm == Some(0) || req.tpm == Some(0) {
            return Err(IdentityError::Invalid(
                "rpm and tpm must be at least 1 (omit them for no limit)".into(),
            ));
        }
        let secret = generate_secret(SECRET_LEN);
        let key = ApiKey {
            id: new_id("igk"),
            name,
            secret_sha256: super::secret::hash_secret_hex(&secret),
            scopes: req.scopes.unwrap_or_else(Scopes::all).names(),
            roles: req.roles,
            user_id: req.user_id,
            org_id,
            expires_ms: req.expires_ms,
            rpm: req.rpm,
            tpm: req.tpm,
            created_ms: now,
            revoked_ms: None,
        };
        self.put(Collection::Keys, &key.id, &key, None, None, String::new)
            .await?;
        Ok(NewKey {
            token: format!("{}:{secret}", key.id),
            key,
        })
    }

    /// Revoke a key (kept, marked revoked, so usage stays attributable). Revoking twice is
    /// not an error.
    pub async fn revoke_key(&self, id: &str) -> Result<ApiKey> {
        let mut key = self.key(id).await?;
        if key.revoked_ms.is_none() {
            key.revoked_ms = Some(now_ms());
            self.put(Collection::Keys, id, &key, None, None, String::new)
                .await?;
        }
        Ok(key)
    }
}
