//! Lifecycle calls carried to the node that owns a model: an admin call made on any instance is
//! sent through the store to the node that runs (or is pinned to run) the model, which carries
//! it out and leaves its answer for the sender. With the embedded store there is one node, and
//! nothing is ever sent.

use super::error::LifecycleError;
use super::service::ModelError;
use crate::store::Store;
use crate::telemetry::now_ms;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often the sender looks for the answer.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// What the owning node is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Start,
    Stop,
    Apply,
    Delete,
    Readiness,
    Test,
    Logs { tail: usize, diagnose: bool },
}

impl Op {
    /// How long the sender waits for the answer: long enough for a test's inference.
    pub fn wait(&self) -> Duration {
        match self {
            Op::Test => Duration::from_secs(130),
            _ => Duration::from_secs(15),
        }
    }
}

/// A message to a node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Command {
    /// The message id (its answer is left under it).
    pub id: String,
    /// The node that sent it.
    pub from: String,
    pub model: String,
    #[serde(flatten)]
    pub op: Op,
    /// Unix ms after which the sender no longer waits: a command that arrives later (a
    /// store outage delayed it) is not carried out.
    pub deadline_ms: u64,
}

/// An error as it travels back.
#[derive(Debug, Serialize, Deserialize)]
pub struct Failure {
    pub kind: String,
    pub message: String,
}

/// The answer to a command: the operation's result as JSON, or why it failed.
pub type Reply = Result<serde_json::Value, Failure>;

impl From<&LifecycleError> for Failure {
    fn from(e: &LifecycleError) -> Self {
        let kind = match e {
            LifecycleError::NoRunner(_) => "no_runner",
            LifecycleError::Conflict(_) => "conflict",
            LifecycleError::Unstartable(_) => "unstartable",
            LifecycleError::Capacity(_) => "capacity",
            LifecycleError::NodeUnavailable(_) => "node_unavailable",
            LifecycleError::HandingOver(_) => "handing_over",
            LifecycleError::Model(ModelError::NotFound) => "not_found",
            LifecycleError::Model(ModelError::Invalid(_)) => "invalid",
            LifecycleError::Model(ModelError::Conflict(_)) => "model_conflict",
            // The store failed on the owning node: a fault of the gateway (500), as locally.
            LifecycleError::Model(_) => "internal",
        };
        Failure {
            kind: kind.into(),
            message: e.to_string(),
        }
    }
}

impl From<Failure> for LifecycleError {
    fn from(f: Failure) -> Self {
        match f.kind.as_str() {
            "no_runner" => LifecycleError::NoRunner(f.message),
            "conflict" => LifecycleError::Conflict(f.message),
            "unstartable" => LifecycleError::Unstartable(f.message),
            "not_found" => LifecycleError::Model(ModelError::NotFound),
            "invalid" => LifecycleError::Model(ModelError::Invalid(f.message)),
            "model_conflict" => LifecycleError::Model(ModelError::Conflict(f.message)),
            "capacity" => LifecycleError::Capacity(f.message),
            "handing_over" => LifecycleError::HandingOver(f.message),
            "internal" => LifecycleError::Model(ModelError::Corrupt(f.message)),
            _ => LifecycleError::NodeUnavailable(f.message),
        }
    }
}

/// Send `op` on `model` to `node` and wait for its answer.
pub async fn call<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    from: &str,
    node: &str,
    model: &str,
    op: Op,
) -> Result<T, LifecycleError> {
    let wait = op.wait();
    let cmd = Command {
        id: format!("{:032x}", rand::random::<u128>()),
        from: from.to_string(),
        model: model.to_string(),
        op,
        deadline_ms: now_ms() + wait.as_millis() as u64,
    };
    let unavailable = |what: String| LifecycleError::NodeUnavailable(what);
    let body = serde_json::to_vec(&cmd).map_err(|e| unavailable(e.to_string()))?;
    store
        .node_send(node, &body)
        .await
        .map_err(|e| unavailable(format!("cannot reach node {node}: {e}")))?;
    let until = tokio::time::Instant::now() + wait;
    loop {
        tokio::time::sleep(POLL_EVERY).await;
        // A store that is briefly unreachable is asked again until the deadline.
        if let Ok(Some(answer)) = store.reply_take(&cmd.id).await {
            let reply: Reply = serde_json::from_slice(&answer)
                .map_err(|e| unavailable(format!("node {node} answered unreadably: {e}")))?;
            let value = reply.map_err(LifecycleError::from)?;
            return serde_json::from_value(value)
                .map_err(|e| unavailable(format!("node {node} answered unreadably: {e}")));
        }
        if tokio::time::Instant::now() >= until {
            return Err(unavailable(format!(
                "node {node} did not answer within {} s",
                wait.as_secs()
            )));
        }
    }
}

/// The reply to leave for a result.
pub fn reply<T: Serialize>(result: Result<T, LifecycleError>) -> Vec<u8> {
    let reply: Reply = match result {
        Ok(v) => serde_json::to_value(v).map_err(|e| Failure {
            kind: "unavailable".into(),
            message: e.to_string(),
        }),
        Err(e) => Err(Failure::from(&e)),
    };
    serde_json::to_vec(&reply).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_errors_survive_the_trip() {
        let cmd = Command {
            id: "m1".into(),
            from: "a".into(),
            model: "mdl_x".into(),
            op: Op::Logs {
                tail: 5,
                diagnose: true,
            },
            deadline_ms: 9,
        };
        let back: Command = serde_json::from_slice(&serde_json::to_vec(&cmd).unwrap()).unwrap();
        assert_eq!(back.op, cmd.op);
        assert_eq!(back.model, "mdl_x");

        for e in [
            LifecycleError::Conflict("busy".into()),
            LifecycleError::Model(ModelError::NotFound),
            LifecycleError::Unstartable("no weights".into()),
        ] {
            let shown = e.to_string();
            let bytes = reply::<()>(Err(e));
            let r: Reply = serde_json::from_slice(&bytes).unwrap();
            let again = LifecycleError::from(r.unwrap_err());
            assert_eq!(again.to_string(), shown);
        }
    }
}
