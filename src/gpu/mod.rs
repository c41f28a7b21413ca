//! The GPUs of this machine, behind a trait: NVML (the NVIDIA driver's library, loaded at run
//! time by nvml-wrapper: a machine without a driver is not an error, just no GPUs and a reason),
//! or a fixed list (tests, and `[[runner.gpus]]`).

use serde::Serialize;

/// One GPU as the driver reports it (what the VRAM estimate needs).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
}

/// One GPU with everything monitoring shows; a figure the source cannot give is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GpuStats {
    pub index: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub utilization_pct: Option<f64>,
    pub mem_used_mb: Option<f64>,
    pub mem_total_mb: Option<f64>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    /// `major.minor`, e.g. "9.0".
    pub compute_capability: Option<String>,
    pub architecture: Option<String>,
    /// FlashAttention 2 needs compute capability 8.0 (Ampere) or newer.
    pub flash_attention_supported: Option<bool>,
    /// `nvml`, `dcgm`, `dcgm+nvml` (DCGM's figures completed by NVML's) or `config`.
    pub source: String,
}

/// The devices and the driver that reports them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSet {
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports, e.g. "12.4".
    pub cuda_version: Option<String>,
    pub gpus: Vec<GpuStats>,
}

/// Where GPU facts come from.
pub trait GpuSource: Send + Sync {
    /// The devices, or why there are none to tell (no driver, no permission).
    fn devices(&self) -> Result<GpuSet, String>;

    /// The GPUs' memory, for the VRAM estimate.
    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        Ok(self
            .devices()?
            .gpus
            .into_iter()
            .map(|g| Gpu {
                index: g.index,
                name: g.name.unwrap_or_default(),
                memory_total_bytes: (g.mem_total_mb.unwrap_or(0.0) * 1048576.0) as u64,
                memory_used_bytes: (g.mem_used_mb.unwrap_or(0.0) * 1048576.0) as u64,
            })
            .collect())
    }
}

/// The architecture of a compute capability (Blackwell is 10.x, 11.x and 12.x).
pub fn architecture(major: u32, minor: u32) -> String {
    match (major, minor) {
        (10..=12, _) => "Blackwell",
        (9, _) => "Hopper",
        (8, 9) => "Ada Lovelace",
        (8, _) => "Ampere",
        (7, 5..) => "Turing",
        (7, _) => "Volta",
        (6, _) => "Pascal",
        (5, _) => "Maxwell",
        (3, _) => "Kepler",
        _ => return format!("SM {major}.{minor}"),
    }
    .to_string()
}

/// Compute capability, architecture and FlashAttention support of `stats` from its numbers.
pub fn set_capability(stats: &mut GpuStats, major: u32, minor: u32) {
    stats.compute_capability = Some(format!("{major}.{minor}"));
    stats.architecture = Some(architecture(major, minor));
    stats.flash_attention_supported = Some(major >= 8);
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
    fn devices(&self) -> Result<GpuSet, String> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let count = nvml.device_count().map_err(|e| e.to_string())?;
        let gpus = (0..count)
            .map(|i| {
                let d = nvml.device_by_index(i).map_err(|e| e.to_string())?;
                let m = d.memory_info().ok();
                let mut g = GpuStats {
                    index: i,
                    uuid: d.uuid().ok(),
                    // nvml-wrapper answers Strings: nothing to decode (Cortex lost names there).
                    name: d.name().ok(),
                    utilization_pct: d.utilization_rates().ok().map(|u| f64::from(u.gpu)),
                    mem_used_mb: m.as_ref().map(|m| m.used as f64 / 1048576.0),
                    mem_total_mb: m.as_ref().map(|m| m.total as f64 / 1048576.0),
                    temperature_c: d.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
                    power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
                    power_limit_w: d
                        .enforced_power_limit()
                        .ok()
                        .map(|mw| f64::from(mw) / 1000.0),
                    source: "nvml".into(),
                    ..Default::default()
                };
                if let Ok(cc) = d.cuda_compute_capability() {
                    set_capability(&mut g, cc.major as u32, cc.minor as u32);
                }
                Ok(g)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let cuda = nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        Ok(GpuSet {
            driver_version: nvml.sys_driver_version().ok(),
            cuda_version: cuda,
            gpus,
        })
    }
}

/// A fixed list of GPUs (`[[runner.gpus]]`, tests): what it was given, nothing measured.
pub struct Fixed(pub Vec<GpuStats>);

impl Fixed {
    /// GPUs known by their memory only.
    pub fn memory(gpus: Vec<Gpu>) -> Fixed {
        Fixed(
            gpus.into_iter()
                .map(|g| GpuStats {
                    index: g.index,
                    name: Some(g.name),
                    mem_total_mb: Some(g.memory_total_bytes as f64 / 1048576.0),
                    mem_used_mb: Some(g.memory_used_bytes as f64 / 1048576.0),
                    source: "config".into(),
                    ..Default::default()
                })
                .collect(),
        )
    }
}

impl GpuSource for Fixed {
    fn devices(&self) -> Result<GpuSet, String> {
        Ok(GpuSet {
            gpus: self.0.clone(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_nvml_says_why_instead_of_failing() {
        // This machine has no NVIDIA driver; one that has answers with its GPUs.
        match Nvml::load().devices() {
            Ok(set) => {
                assert!(set.driver_version.is_some());
                for g in &set.gpus {
                    assert!(g.mem_total_mb.unwrap_or(0.0) > 0.0 && g.uuid.is_some());
                    assert!(g.name.as_deref().is_some_and(|n| !n.is_empty()));
                    assert!(g
                        .architecture
                        .as_deref()
                        .is_some_and(|a| !a.starts_with("SM ")));
                }
            }
            Err(why) => assert!(why.contains("NVML unavailable"), "{why}"),
        }
        let fixed = Fixed::memory(vec![Gpu {
            index: 0,
            name: "A100".into(),
            memory_total_bytes: 80 << 30,
            memory_used_bytes: 0,
        }]);
        let gpus = fixed.gpus().unwrap();
        assert_eq!((gpus.len(), gpus[0].memory_total_bytes), (1, 80 << 30));
    }

    #[test]
    fn architectures_include_blackwell() {
        assert_eq!(architecture(10, 0), "Blackwell"); // B200
        assert_eq!(architecture(12, 0), "Blackwell"); // RTX 50, RTX PRO 6000
        assert_eq!(architecture(9, 0), "Hopper");
        assert_eq!(architecture(8, 9), "Ada Lovelace");
        assert_eq!(architecture(8, 6), "Ampere");
        assert_eq!(architecture(7, 5), "Turing");
        assert_eq!(architecture(7, 0), "Volta");
        assert_eq!(architecture(13, 0), "SM 13.0");
        let mut g = GpuStats::default();
        set_capability(&mut g, 7, 5);
        assert_eq!(g.flash_attention_supported, Some(false));
    }
}
