//! Which action an admin call is, and where its target comes from: a table of the admin API's
//! changing routes (method and route template, without the `/admin` or `/api/ai/v1/admin`
//! prefix). A changing call the table does not name (a 405 on a known path) is recorded as
//! `<METHOD> <path>`.

use axum::http::Method;
use serde_json::Value;

/// Longest target kept (longer ones are cut at a character boundary).
pub const MAX_TARGET: usize = 256;

/// Where a change's target comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFrom {
    /// Nothing: the change is of the whole gateway.
    Nothing,
    /// A path parameter.
    Param(&'static str),
    /// A path parameter holding an API key id: anything from a ':' on is cut (a token pasted
    /// in place of an id never leaves its secret in the record).
    KeyParam(&'static str),
    /// Fields of the JSON body: one field's value as it is; several as `field=value` pairs.
    Body(&'static [&'static str]),
    /// The id the handler created (the answer's [`Created`]); else (a refused create) the
    /// JSON body's field (the name asked for).
    Created(&'static str),
    /// Query parameters when all are given, else the JSON body's fields (as [`Self::Body`]).
    QueryOrBody(&'static [&'static str]),
    /// The configuration file's path.
    ConfigFile,
}

impl TargetFrom {
    /// Whether the request body must be read to find the target.
    pub fn needs_body(self) -> bool {
        matches!(
            self,
            Self::Body(_) | Self::Created(_) | Self::QueryOrBody(_)
        )
    }
}

/// Put in an answer's extensions by a handler that creates something: the new id.
#[derive(Debug, Clone)]
pub struct Created(pub String);

/// One changing route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub action: String,
    pub target: TargetFrom,
}

/// Whether calls with this method change something (and are recorded).
pub fn is_change(m: &Method) -> bool {
    *m == Method::POST || *m == Method::PUT || *m == Method::PATCH || *m == Method::DELETE
}

const TABLE: &[(&str, &str, &str, TargetFrom)] = {
    use TargetFrom::*;
    &[
        ("POST", "/pods/{id}/restart", "pod.restart", Param("id")),
        (
            "POST",
            "/affinity/clear",
            "affinity.clear",
            Body(&["user_id", "model_id"]),
        ),
        ("POST", "/registry/refresh", "registry.refresh", Nothing),
        ("POST", "/orgs", "org.create", Created("name")),
        ("PATCH", "/orgs/{id}", "org.update", Param("id")),
        ("DELETE", "/orgs/{id}", "org.delete", Param("id")),
        ("POST", "/users", "user.create", Created("name")),
        ("PATCH", "/users/{id}", "user.update", Param("id")),
        ("DELETE", "/users/{id}", "user.delete", Param("id")),
        ("POST", "/keys", "key.create", Created("name")),
        ("DELETE", "/keys/{id}", "key.revoke", KeyParam("id")),
        ("POST", "/config/reload", "config.reload", ConfigFile),
        (
            "POST",
            "/upstreams/refresh-health",
            "upstreams.refresh_health",
            Nothing,
        ),
        (
            "POST",
            "/models",
            "model.create",
            Created("served_model_name"),
        ),
        (
            "PUT",
            "/models/base-dir",
            "model.base_dir",
            Body(&["base_dir"]),
        ),
        (
            "POST",
            "/models/dry-run",
            "model.dry_run",
            Body(&["served_model_name"]),
        ),
        ("POST", "/models/{id}/dry-run", "model.dry_run", Param("id")),
        ("PATCH", "/models/{id}", "model.update", Param("id")),
        ("DELETE", "/models/{id}", "model.delete", Param("id")),
        ("POST", "/models/{id}/start", "model.start", Param("id")),
        ("POST", "/models/{id}/stop", "model.stop", Param("id")),
        ("POST", "/models/{id}/apply", "model.apply", Param("id")),
        ("POST", "/models/{id}/test", "model.test", Param("id")),
        (
            "POST",
            "/models/registry",
            "registry.add",
            Body(&["model", "url"]),
        ),
        (
            "DELETE",
            "/models/registry",
            "registry.remove",
            QueryOrBody(&["model", "url"]),
        ),
    ]
};

/// The route of a changing call: `path` is the route's template below the admin prefix.
pub fn lookup(method: &Method, path: &str) -> Route {
    TABLE
        .iter()
        .find(|(m, p, _, _)| *m == method.as_str() && *p == path)
        .map(|(_, _, action, target)| Route {
            action: action.to_string(),
            target: *target,
        })
        .unwrap_or_else(|| Route {
            action: format!("{method} {path}"),
            target: TargetFrom::Nothing,
        })
}

/// A value as target text: a string as it is, anything else as compact JSON; null is none.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The target named by `fields` of a JSON object (see [`TargetFrom::Body`]).
pub fn fields(get: impl Fn(&str) -> Option<String>, names: &[&str]) -> Option<String> {
    if let [one] = names {
        return get(one).map(|v| cut(&v));
    }
    let pairs: Vec<String> = names
        .iter()
        .filter_map(|n| get(n).map(|v| format!("{n}={v}")))
        .collect();
    (!pairs.is_empty()).then(|| cut(&pairs.join(" ")))
}

/// [`fields`] of a JSON body (none when it is not a JSON object).
pub fn body_fields(body: &[u8], names: &[&str]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    fields(|n| obj.get(n).and_then(text), names)
}

/// An API key id from what was sent in its place (the part before any ':').
pub fn key_id(v: &str) -> String {
    cut(v.split(':').next().unwrap_or_default())
}

/// At most [`MAX_TARGET`] bytes, cut at a character boundary.
pub fn cut(s: &str) -> String {
    if s.len() <= MAX_TARGET {
        return s.to_string();
    }
    let mut end = MAX_TARGET;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_actions_and_targets() {
        let r = lookup(&Method::DELETE, "/keys/{id}");
        assert_eq!(r.action, "key.revoke");
        assert_eq!(r.target, TargetFrom::KeyParam("id"));
        assert_eq!(lookup(&Method::POST, "/keys").action, "key.create");
        assert_eq!(
            lookup(&Method::DELETE, "/models/registry").action,
            "registry.remove"
        );
        assert_eq!(
            lookup(&Method::PATCH, "/models/{id}").action,
            "model.update"
        );
        let unknown = lookup(&Method::PUT, "/keys");
        assert_eq!(unknown.action, "PUT /keys");
        assert_eq!(unknown.target, TargetFrom::Nothing);
        assert!(is_change(&Method::DELETE) && !is_change(&Method::GET));
        assert!(!is_change(&Method::HEAD));
    }

    #[test]
    fn every_table_entry_is_unique() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert!((a.0, a.1) != (b.0, b.1), "{} {} twice", a.0, a.1);
            }
        }
    }

    #[test]
    fn targets_from_bodies_and_ids() {
        let body = br#"{"user_id":"u1","model_id":"meta/llama","x":1}"#;
        assert_eq!(
            body_fields(body, &["user_id", "model_id"]).as_deref(),
            Some("user_id=u1 model_id=meta/llama")
        );
        let body = br#"{"user_id":"u1","model_id":null}"#;
        assert_eq!(
            body_fields(body, &["user_id", "model_id"]).as_deref(),
            Some("user_id=u1")
        );
        assert_eq!(
            body_fields(br#"{"name":"acme"}"#, &["name"]).as_deref(),
            Some("acme")
        );
        assert_eq!(
            body_fields(br#"{"name":5}"#, &["name"]).as_deref(),
            Some("5")
        );
        assert_eq!(body_fields(b"not json", &["name"]), None);
        assert_eq!(body_fields(b"[]", &["name"]), None);
        assert_eq!(body_fields(b"{}", &["a", "b"]), None);
        assert_eq!(key_id("ak_123:s3cret"), "ak_123");
        assert_eq!(key_id("ak_123"), "ak_123");
        let long = "é".repeat(200);
        let c = cut(&long);
        assert!(c.len() <= MAX_TARGET && long.starts_with(&c));
    }
}
