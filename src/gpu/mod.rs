//! The GPUs of this machine, behind a trait: NVML (the NVIDIA driver's library, loaded at run
//! time by nvml-wrapper: a machine without a driver is not an error, just no GPUs and a reason),
//! or a fixed list (tests, and `[[runner.gpus]]`).

use serde::Serialize;

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
}

/// Where GPU facts come from.
pub trait GpuSource: Send + Sync {
    /// The GPUs, or why there are none to tell (no driver, no permission).
    fn gpus(&self) -> Result<Vec<Gpu>, String>;
}

/// NVML, loaded once.
pub struct Nvml {
    nvml: Result<nvml_wrapper::Nvml, String>,
}

impl Nvml {
    /// Load the NVIDIA driver's library (`libnvidia-ml.so`); failing is recorded, not fatal.
    pub fn load() -> Nvml {
        let nvml = nvml_wrapper::Nvml::init()
            .map_err(|e| format!("NVML unavailable (no NVIDIA driver?): {e}"));
        match &nvml {
            Ok(_) => tracing::info!("NVML loaded: GPUs are read from the NVIDIA driver"),
            Err(why) => tracing::debug!(%why, "no NVML"),
        }
        Nvml { nvml }
    }
}

impl GpuSource for Nvml {
    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let count = nvml.device_count().map_err(|e| e.to_string())?;
        (0..count)
            .map(|i| {
                let d = nvml.device_by_index(i).map_err(|e| e.to_string())?;
                let m = d.memory_info().map_err(|e| e.to_string())?;
                Ok(Gpu {
                    index: i,
                    name: d.name().unwrap_or_default(),
                    memory_total_bytes: m.total,
                    memory_used_bytes: m.used,
                })
            })
            .collect()
    }
}

/// A fixed list of GPUs.
pub struct Fixed(pub Vec<Gpu>);

impl GpuSource for Fixed {
    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_nvml_says_why_instead_of_failing() {
        // This machine has no NVIDIA driver; one that has answers with its GPUs.
        match Nvml::load().gpus() {
            Ok(gpus) => assert!(gpus.iter().all(|g| g.memory_total_bytes > 0)),
            Err(why) => assert!(why.contains("NVML unavailable"), "{why}"),
        }
        let fixed = Fixed(vec![Gpu {
            index: 0,
            name: "A100".into(),
            memory_total_bytes: 80 << 30,
            memory_used_bytes: 0,
        }]);
        assert_eq!(fixed.gpus().unwrap().len(), 1);
    }
}
