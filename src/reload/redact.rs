//! The running configuration as `GET /admin/config` shows it: secrets replaced.

use serde_json::Value;

/// What stands for a secret.
const REDACTED: &str = "<redacted>";

/// Flags of engine command lines whose value is a secret.
const SECRET_FLAGS: &[&str] = &["--api-key", "--hf-token", "--token"];

/// The configuration as JSON, with the admin credentials' secret digests, every password in a
/// URL (the store, the pod provider, monitoring targets, servers) and every secret flag's value
/// in a command line replaced. (API keys of servers and pods are named by the environment
/// variables that hold them, never written in the file.)
pub fn redacted(config: &crate::config::Config) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(creds) = v["admin"]["credentials"].as_array_mut() {
        for c in creds {
            c["secret_sha256"] = Value::String(REDACTED.into());
        }
    }
    scrub_value(&mut v);
    v
}

fn scrub_value(v: &mut Value) {
    match v {
        Value::String(s) => *s = scrubbed(s),
        Value::Array(items) => {
            let mut secret_next = false;
            for item in items {
                if let Value::String(s) = item {
                    if std::mem::take(&mut secret_next) {
                        *s = REDACTED.into();
                        continue;
                    }
                    secret_next = SECRET_FLAGS.contains(&s.as_str());
                }
                scrub_value(item);
            }
        }
        Value::Object(map) => map.values_mut().for_each(scrub_value),
        _ => {}
    }
}

/// `text` with the password of every `scheme://user:secret@host` in it, and the value of every
/// `--api-key=...` (and the other secret flags), replaced.
pub fn scrubbed(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    // `--api-key=sk` and `--api-key sk` (a whole command line in one string), every time.
    for flag in SECRET_FLAGS {
        for sep in ["=", " "] {
            let prefix = format!("{flag}{sep}");
            let mut at = 0;
            while let Some(start) = out[at..].find(&prefix).map(|i| at + i) {
                let from = start + prefix.len();
                let end = out[from..]
                    .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                    .map_or(out.len(), |e| from + e);
                out.replace_range(from..end, REDACTED);
                at = from + REDACTED.len();
            }
        }
    }
    out
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

    #[test]
    fn passwords_in_any_url_and_secret_flags_are_replaced() {
        assert_eq!(
            scrubbed("store.url: cannot reach redis://app:hunter2@db:6379/0 (refused)"),
            "store.url: cannot reach redis://app:<redacted>@db:6379/0 (refused)"
        );
        assert_eq!(scrubbed("https://h:1/v1 and x@y"), "https://h:1/v1 and x@y");
        assert_eq!(
            scrubbed("vllm serve m --api-key=sk-1 --port 1 --api-key=sk-2"),
            "vllm serve m --api-key=<redacted> --port 1 --api-key=<redacted>"
        );
        assert_eq!(
            scrubbed("sh -c 'vllm serve m --api-key sk-3 --hf-token hf_x'"),
            "sh -c 'vllm serve m --api-key <redacted> --hf-token <redacted>'"
        );
        let mut v = serde_json::json!({"pods": {"api_url": "https://u:pw@rp/v1"},
            "runner": {"args": ["--api-key", "sk-2", "--port", "1"]}});
        scrub_value(&mut v);
        let text = v.to_string();
        assert!(!text.contains("pw@") && !text.contains("sk-2"), "{text}");
        assert!(text.contains("\"--port\",\"1\""), "{text}");
    }
}
