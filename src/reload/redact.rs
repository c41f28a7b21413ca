//! The running configuration as `GET /admin/config` shows it: secrets replaced.

use serde_json::Value;

/// What stands for a secret.
const REDACTED: &str = "<redacted>";

/// The configuration as JSON, with the admin credentials' secret digests and any password in
/// the store's URL replaced. (API keys of servers and pods are named by the environment
/// variables that hold them, never written in the file.)
pub fn redacted(config: &crate::config::Config) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(creds) = v["admin"]["credentials"].as_array_mut() {
        for c in creds {
            c["secret_sha256"] = Value::String(REDACTED.into());
        }
    }
    if let Some(url) = v["store"]["url"].as_str() {
        v["store"]["url"] = Value::String(without_password(url));
    }
    v
}

/// `redis://user:secret@host/` as `redis://user:<redacted>@host/`.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(REDACTED));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_and_the_rest_kept() {
        let c = crate::config::parse_str(&format!(
            "[store]\nurl = \"redis://app:hunter2@db:6379/\"\n[[admin.credentials]]\napi_key = \"ops\"\nsecret_sha256 = \"{}\"\nroles = [\"admin\"]\n",
            "ab".repeat(32)
        ))
        .unwrap();
        let v = redacted(&c);
        let text = v.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains(&"ab".repeat(32)),
            "{text}"
        );
        assert_eq!(v["admin"]["credentials"][0]["api_key"], "ops");
        assert!(v["store"]["url"]
            .as_str()
            .unwrap()
            .starts_with("redis://app:"));
    }
}
