//! Pods declared in the config (`[[pods.static]]`), for fleets without a cloud API.

use super::{Pod, PodError, PodProvider};
use crate::config::StaticPodConfig;
use async_trait::async_trait;

pub struct StaticPods {
    pods: Vec<Pod>,
}

impl StaticPods {
    pub fn new(config: &[StaticPodConfig]) -> Self {
        let pods = config
            .iter()
            .map(|p| Pod {
                id: p.id.clone(),
                name: p.name.clone(),
                desired_status: p.desired_status.clone(),
                url: p.url.trim_end_matches('/').to_string(),
                cost_per_hr: p.cost_per_hr,
                data_center_id: p.data_center_id.clone(),
                location: p.location.clone(),
                gpu_type_id: p.gpu_type_id.clone(),
                last_started_at: None,
                last_status_change: None,
            })
            .collect();
        Self { pods }
    }
}

const NO_LIFECYCLE: &str =
    "static pods are declared in the config and have no lifecycle API: restart them where they run";

#[async_trait]
impl PodProvider for StaticPods {
    async fn list(&self) -> Result<Vec<Pod>, PodError> {
        Ok(self.pods.clone())
    }

    async fn get(&self, id: &str) -> Result<Pod, PodError> {
        self.pods
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .ok_or(PodError::NotFound)
    }

    async fn stop(&self, _id: &str) -> Result<(), PodError> {
        Err(PodError::Unsupported(NO_LIFECYCLE.into()))
    }

    async fn start(&self, _id: &str) -> Result<(), PodError> {
        Err(PodError::Unsupported(NO_LIFECYCLE.into()))
    }
}
