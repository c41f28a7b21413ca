//! The pod provider behind a short-lived cache (RunPod rate-limits its API), filtered to the
//! pods whose name carries the configured prefix.

use super::{kind_of, Pod, PodError, PodProvider, RunPod, StaticPods};
use crate::config::{PodProviderKind, PodsConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which phase of a restart failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stop,
    Resume,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stop => "stop",
            Phase::Resume => "resume",
        }
    }
}

/// Why a restart did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("pod not found")]
    NotFound,
    #[error("{0}")]
    Unsupported(String),
    /// Looking the pod up failed (nothing was stopped).
    #[error("{0}")]
    Provider(String),
    #[error("{}: {detail}", phase.as_str())]
    Failed { phase: Phase, detail: String },
}

/// The admin API's view of the pod provider.
pub struct Pods {
    provider: Option<Box<dyn PodProvider>>,
    prefix: String,
    ttl: Duration,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Pod>>)>>,
    /// The last failed list call: callers within [`ERROR_BACKOFF`] get its error without
    /// asking the provider again (RunPod rate-limits).
    failed: std::sync::Mutex<Option<(Instant, PodError)>>,
}

/// How long a failed list call is answered from memory.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Why the pod provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PodsSetupError {
    #[error(
        "pods.api_key_env: the environment variable {0} is not set (it holds the RunPod API key)"
    )]
    MissingKey(String),
    #[error("pods: {0}")]
    Client(PodError),
}

impl Pods {
    /// The provider the config names (reads the RunPod key from the environment).
    pub fn from_config(c: &PodsConfig) -> Result<Self, PodsSetupError> {
        let provider: Option<Box<dyn PodProvider>> = match c.provider {
            PodProviderKind::None => None,
            PodProviderKind::Static => Some(Box::new(StaticPods::new(&c.static_pods))),
            PodProviderKind::Runpod => {
                let key = std::env::var(&c.api_key_env)
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| PodsSetupError::MissingKey(c.api_key_env.clone()))?;
                let client = RunPod::new(
                    &c.api_url,
                    &key,
                    &c.url_template,
                    c.port,
                    Duration::from_millis(c.timeout_ms),
                )
                .map_err(PodsSetupError::Client)?;
                Some(Box::new(client))
            }
        };
        Ok(Self::new(
            provider,
            c.name_prefix.clone(),
            Duration::from_millis(c.cache_ttl_ms),
        ))
    }

    pub fn new(provider: Option<Box<dyn PodProvider>>, prefix: String, ttl: Duration) -> Self {
        Self {
            provider,
            prefix,
            ttl,
            cache: tokio::sync::Mutex::new(None),
            failed: std::sync::Mutex::new(None),
        }
    }

    /// Our pods (name starts with the prefix), sorted by name then id; cached for the TTL.
    /// Concurrent callers share one provider call.
    pub async fn list(&self) -> Result<Arc<Vec<Pod>>, PodError> {
        let Some(provider) = &self.provider else {
            return Ok(Arc::default());
        };
        let mut cache = self.cache.lock().await;
        if let Some((at, pods)) = &*cache {
            if at.elapsed() < self.ttl {
                return Ok(pods.clone());
            }
        }
        if let Some((at, e)) = self.failed.lock().ok().and_then(|f| f.clone()) {
            if at.elapsed() < ERROR_BACKOFF.min(self.ttl) {
                return Err(e);
            }
        }
        let listed = provider.list().await;
        if let Ok(mut f) = self.failed.lock() {
            *f = listed.as_ref().err().map(|e| (Instant::now(), e.clone()));
        }
        let mut pods: Vec<Pod> = listed?
            .into_iter()
            .filter(|p| p.name.starts_with(&self.prefix))
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        let pods = Arc::new(pods);
        *cache = Some((Instant::now(), pods.clone()));
        Ok(pods)
    }

    /// One of our pods: from the cached list when it is there, else asked of the provider.
    pub async fn get(&self, id: &str) -> Result<Pod, PodError> {
        let Some(provider) = &self.provider else {
            return Err(PodError::NotFound);
        };
        let cached = {
            let cache = self.cache.lock().await;
            cache.as_ref().and_then(|(at, pods)| {
                (at.elapsed() < self.ttl)
                    .then(|| pods.iter().find(|p| p.id == id).cloned())
                    .flatten()
            })
        };
        let pod = match cached {
            Some(p) => p,
            None => provider.get(id).await?,
        };
        if !pod.name.starts_with(&self.prefix) {
            return Err(PodError::NotFound);
        }
        Ok(pod)
    }

    /// Stop, then start the pod. Returns once the provider accepted both calls; the pod's
    /// status changes asynchronously.
    pub async fn restart(&self, id: &str) -> Result<(), RestartError> {
        let Some(provider) = &self.provider else {
            return Err(RestartError::NotFound);
        };
        match self.get(id).await {
            Ok(_) => {}
            Err(PodError::NotFound) => return Err(RestartError::NotFound),
            Err(PodError::Unsupported(d)) => return Err(RestartError::Unsupported(d)),
            Err(PodError::Api(detail)) => return Err(RestartError::Provider(detail)),
        }
        let result = async {
            provider.stop(id).await.map_err(|e| (Phase::Stop, e))?;
            provider.start(id).await.map_err(|e| (Phase::Resume, e))
        }
        .await;
        // The pod's status is changing: the next read asks the provider.
        *self.cache.lock().await = None;
        if let Ok(mut f) = self.failed.lock() {
            *f = None;
        }
        match result {
            Ok(()) => Ok(()),
            Err((_, PodError::Unsupported(d))) => Err(RestartError::Unsupported(d)),
            Err((Phase::Stop, PodError::NotFound)) => Err(RestartError::NotFound),
            Err((phase, e)) => Err(RestartError::Failed {
                phase,
                detail: e.to_string(),
            }),
        }
    }

    /// A pod's kind (its name without the prefix and replica number).
    pub fn kind(&self, name: &str) -> String {
        kind_of(name, &self.prefix)
    }
}
