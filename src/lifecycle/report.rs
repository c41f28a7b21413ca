//! What the lifecycle reports about one model, the same through every instance (asked of the
//! node that runs it): its readiness, a test request, and its engine's logs.

use super::diagnose::{Finding, Summary};
use super::error::{LifecycleError, Result};
use super::probe::{self, Probe, TestResult};
use super::record::ModelState;
use super::remote::Op;
use super::supervisor::Lifecycle;
use serde::{Deserialize, Serialize};

/// Whether a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadinessStatus {
    Ready,
    Loading,
    Stopped,
    Failed,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready`, `loading`, `stopped` or `failed`.
    pub status: ReadinessStatus,
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Logs {
    pub state: ModelState,
    /// The node whose engine wrote them (the node it runs or last ran on).
    #[serde(default)]
    pub node: Option<String>,
    /// The engine's last output lines, oldest first (with the gateway's own notes, prefixed
    /// `infergate:`).
    pub lines: Vec<String>,
    /// With `diagnose=true`: every known problem found in the whole kept log, most severe first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Vec<Finding>>,
    /// With `diagnose=true`: what the engine reported of its startup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

impl Lifecycle {
    /// The last `n` lines of a model's engine output on this node (empty when it never ran here).
    pub fn log_tail(&self, id: &str, n: usize) -> Vec<String> {
        self.logs
            .lock()
            .ok()
            .and_then(|l| l.get(id).cloned())
            .map(|ring| ring.tail(n))
            .unwrap_or_default()
    }

    /// Probe the engine of a model running on this node, if it runs here.
    pub async fn probe_model(&self, id: &str) -> Option<Probe> {
        let (port, key, served) = {
            let engines = self.engines.lock().ok()?;
            let e = engines.get(id)?;
            (e.port, e.key.clone(), e.served.clone())
        };
        Some(probe::probe(&self.client, port, &key, &served).await)
    }

    /// The base URL and key of a model's engine on this node.
    pub fn endpoint(&self, id: &str) -> Option<(String, String)> {
        let engines = self.engines.lock().ok()?;
        let e = engines.get(id)?;
        Some((format!("http://127.0.0.1:{}", e.port), e.key.clone()))
    }

    /// Send one small request to a running model's own engine (not through the routing
    /// table), on the node that runs it: a chat completion, or an embedding for `embed` models.
    pub async fn test(&self, id: &str) -> Result<TestResult> {
        match self.route_call(id, &Op::Test).await? {
            Some(node) => self.send(&node, id, Op::Test).await,
            None => self.test_here(id).await,
        }
    }

    pub(super) async fn test_here(&self, id: &str) -> Result<TestResult> {
        let model = self.here(id, &Op::Test).await?;
        let Some((base, key)) = self
            .endpoint(id)
            .filter(|_| model.state == ModelState::Running)
        else {
            return Err(LifecycleError::Conflict(format!(
                "the model is not running (state: {})",
                model.state.as_str()
            )));
        };
        Ok(probe::test(&self.client, &base, &key, &model).await)
    }

    /// Whether a model serves: its engine probed by the node that runs it, or its record.
    pub async fn readiness(&self, id: &str) -> Result<Readiness> {
        match self.route_call(id, &Op::Readiness).await? {
            Some(node) => self.send(&node, id, Op::Readiness).await,
            None => self.readiness_here(id).await,
        }
    }

    pub(super) async fn readiness_here(&self, id: &str) -> Result<Readiness> {
        let model = self.models.get(id).await?;
        let (status, detail) = match model.state {
            ModelState::Stopped => (ReadinessStatus::Stopped, None),
            ModelState::Stopping => (ReadinessStatus::Stopped, Some("stopping".to_string())),
            ModelState::Failed => (ReadinessStatus::Failed, model.state_detail),
            ModelState::Starting | ModelState::Loading => (
                ReadinessStatus::Loading,
                Some(
                    model
                        .state_detail
                        .unwrap_or_else(|| model.state.as_str().into()),
                ),
            ),
            ModelState::Running => match self.probe_model(id).await {
                Some(Probe::Ready) => (ReadinessStatus::Ready, None),
                Some(Probe::Loading(why)) => (ReadinessStatus::Loading, Some(why)),
                Some(Probe::Down) => (
                    ReadinessStatus::Failed,
                    Some("the engine does not answer".into()),
                ),
                None => (
                    ReadinessStatus::Failed,
                    Some("no engine runs for it on its node (the gateway restarted?)".into()),
                ),
            },
        };
        Ok(Readiness { status, detail })
    }

    /// The last `tail` lines a model's engine wrote, from the node it runs (or last ran) on;
    /// with `diagnose`, what the whole kept log says about its startup.
    pub async fn logs(&self, id: &str, tail: usize, diagnose: bool) -> Result<Logs> {
        let op = Op::Logs { tail, diagnose };
        match self.route_call(id, &op).await? {
            Some(node) => self.send(&node, id, op).await,
            None => self.logs_here(id, tail, diagnose).await,
        }
    }

    pub(super) async fn logs_here(&self, id: &str, tail: usize, diagnose: bool) -> Result<Logs> {
        let model = self.models.get(id).await?;
        let (diagnosis, summary) = if diagnose {
            let all = self.log_tail(id, usize::MAX);
            // Up to a few MiB through every pattern: off the async threads.
            let read = tokio::task::spawn_blocking(move || {
                (
                    super::diagnose::diagnose(&all),
                    super::diagnose::summarize(&all),
                )
            })
            .await
            .map_err(|e| LifecycleError::NodeUnavailable(e.to_string()))?;
            (Some(read.0), Some(read.1))
        } else {
            (None, None)
        };
        Ok(Logs {
            state: model.state,
            node: model.node,
            lines: self.log_tail(id, tail),
            diagnosis,
            summary,
        })
    }
}
