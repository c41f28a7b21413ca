//! Key names (documented in docs/valkey-keys.md). Keys that are read or written together share a
//! hash tag (`{...}`) so that each operation stays in one slot of a Valkey Cluster.

/// Key builder for one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// STRING server URL, with the affinity TTL: `<p>:aff:{<user>}:<model>`.
    pub fn affinity(&self, user: &str, model: &str) -> String {
        format!("{}:aff:{{{}}}:{}", self.prefix, user, model)
    }

    /// SET of the models the user has entries for, same TTL: `<p>:affidx:{<user>}`.
    pub fn affinity_index(&self, user: &str) -> String {
        format!("{}:affidx:{{{}}}", self.prefix, user)
    }

    /// HASH `<provider>:<hit|miss|fallback>` -> count: `<p>:affstats`.
    pub fn affinity_stats(&self) -> String {
        format!("{}:affstats", self.prefix)
    }

    /// STREAM of the prompts each instance routed by prefix, in batches: `<p>:prefixes`.
    pub fn prefixes(&self) -> String {
        format!("{}:prefixes", self.prefix)
    }

    /// The seed of prompts' block hashes (cache-aware routing), one for every instance.
    pub fn prefix_seed(&self) -> String {
        format!("{}:prefix:seed", self.prefix)
    }

    /// STREAM of invalidation events: `<p>:events`.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// HASH health snapshot of one server: `<p>:health:{<url>}`.
    pub fn health(&self, url: &str) -> String {
        format!("{}:health:{{{}}}", self.prefix, url)
    }

    /// HASH of one instance's demand on a server (`inflight`, `last_use_ms`, `m:<model>`):
    /// `<p>:demand:{<url>}:inst:<instance>`.
    pub fn demand_instance(&self, url: &str, instance: &str) -> String {
        format!("{}:demand:{{{}}}:inst:{}", self.prefix, url, instance)
    }

    /// ZSET instance -> last report (Unix ms): `<p>:demand:{<url>}:instances`.
    pub fn demand_instances(&self, url: &str) -> String {
        format!("{}:demand:{{{}}}:instances", self.prefix, url)
    }

    /// STRING request count of one model in one minute: `<p>:demand:{<url>}:req:<model>:<minute>`.
    pub fn demand_requests(&self, url: &str, model: &str, minute: u64) -> String {
        format!(
            "{}:demand:{{{}}}:req:{}:{}",
            self.prefix, url, model, minute
        )
    }

    /// SET of models with registry routes: `<p>:registry:models`.
    pub fn registry_models(&self) -> String {
        format!("{}:registry:models", self.prefix)
    }

    /// SET of the server URLs registered for a model: `<p>:registry:{<model>}`.
    pub fn registry(&self, model: &str) -> String {
        format!("{}:registry:{{{}}}", self.prefix, model)
    }

    /// HASH id -> JSON document of a collection: `<p>:{docs}:<collection>`.
    pub fn docs(&self, c: crate::store::docs::Collection) -> String {
        format!("{}:{{docs}}:{}", self.prefix, c.as_str())
    }

    /// HASH unique name -> id of a collection: `<p>:{docs}:<collection>:unique`.
    pub fn docs_unique(&self, c: crate::store::docs::Collection) -> String {
        format!("{}:{{docs}}:{}:unique", self.prefix, c.as_str())
    }

    /// HASH `r` (requests) and `t` (tokens) of one key in one Unix minute:
    /// `<p>:rl:{<key id>}:<minute>`.
    pub fn rate(&self, key: &str, minute: u64) -> String {
        format!("{}:rl:{{{}}}:{}", self.prefix, key, minute)
    }

    /// LIST of the usage records of one Unix hour: `<p>:usage:<hour>`.
    pub fn usage(&self, hour: u64) -> String {
        format!("{}:usage:{}", self.prefix, hour)
    }

    /// LIST of the audit records of one Unix day: `<p>:audit:<day>`.
    pub fn audit(&self, day: u64) -> String {
        format!("{}:audit:{}", self.prefix, day)
    }

    /// HASH node -> JSON heartbeat of every lifecycle node: `<p>:nodes`.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// STRING reply to one node message, expiring: `<p>:reply:<message id>`.
    pub fn reply(&self, id: &str) -> String {
        format!("{}:reply:{}", self.prefix, id)
    }

    /// HASH of every instance's monitoring report of one kind (`<instance>` -> report,
    /// `<instance>:until` -> Unix ms it stops counting): `<p>:reports:<kind>`.
    pub fn reports(&self, kind: &str) -> String {
        format!("{}:reports:{}", self.prefix, kind)
    }

    /// STRING marker whose absence means Valkey lost its data: `<p>:epoch`.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_share_a_hash_tag() {
        let k = Keys::new("ig");
        assert_eq!(k.affinity("alice", "qwen"), "ig:aff:{alice}:qwen");
        assert_eq!(k.affinity_index("alice"), "ig:affidx:{alice}");
        assert_eq!(k.health("http://a:1/v1"), "ig:health:{http://a:1/v1}");
    }
}
