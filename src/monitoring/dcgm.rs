//! GPUs from dcgm-exporter's page, by its real names: one series per GPU labelled `gpu` (the
//! index), `UUID` and `modelName`; memory in MiB as `DCGM_FI_DEV_FB_USED` and `_FB_FREE` (the
//! default counters have no `FB_TOTAL`: the total is used + free + reserved). NVML's figures of
//! the same GPU (matched by UUID, else by index; never by list position) fill what DCGM lacks.

use super::promtext::Page;
use crate::gpu::{GpuSet, GpuStats};
use std::collections::BTreeMap;

/// A GPU's figures as dcgm-exporter labels them.
pub fn from_page(page: &Page) -> GpuSet {
    let mut gpus: BTreeMap<u32, GpuStats> = BTreeMap::new();
    let mut driver = None;
    let mut fb: BTreeMap<u32, [Option<f64>; 4]> = BTreeMap::new();
    for s in page
        .series
        .iter()
        .filter(|s| s.name.starts_with("DCGM_FI_"))
    {
        let Some(index) = s.label("gpu").and_then(|g| g.parse::<u32>().ok()) else {
            continue;
        };
        let g = gpus.entry(index).or_insert_with(|| GpuStats {
            index,
            source: "dcgm".into(),
            ..Default::default()
        });
        if g.uuid.is_none() {
            g.uuid = s.label("UUID").map(str::to_string);
        }
        if g.name.is_none() {
            g.name = s.label("modelName").map(str::to_string);
        }
        if driver.is_none() {
            driver = s.label("DCGM_FI_DRIVER_VERSION").map(str::to_string);
        }
        let v = Some(s.value).filter(|v| v.is_finite());
        match s.name.as_str() {
            "DCGM_FI_DEV_GPU_UTIL" => g.utilization_pct = v,
            "DCGM_FI_DEV_GPU_TEMP" => g.temperature_c = v,
            "DCGM_FI_DEV_POWER_USAGE" => g.power_w = v,
            "DCGM_FI_DEV_POWER_MGMT_LIMIT" => g.power_limit_w = v,
            "DCGM_FI_DEV_FB_USED" => fb.entry(index).or_default()[0] = v,
            "DCGM_FI_DEV_FB_FREE" => fb.entry(index).or_default()[1] = v,
            "DCGM_FI_DEV_FB_RESERVED" => fb.entry(index).or_default()[2] = v,
            "DCGM_FI_DEV_FB_TOTAL" => fb.entry(index).or_default()[3] = v,
            _ => {}
        }
    }
    for (index, [used, free, reserved, total]) in fb {
        if let Some(g) = gpus.get_mut(&index) {
            g.mem_used_mb = used;
            g.mem_total_mb = total.or_else(|| Some(used? + free? + reserved.unwrap_or(0.0)));
        }
    }
    GpuSet {
        driver_version: driver,
        cuda_version: None,
        gpus: gpus.into_values().collect(),
    }
}

/// DCGM's set completed by NVML's (`nvml` may be empty: no driver library here).
pub fn merge(dcgm: GpuSet, nvml: Option<GpuSet>) -> GpuSet {
    let Some(nvml) = nvml else {
        return dcgm;
    };
    let gpus = dcgm
        .gpus
        .into_iter()
        .map(|mut g| {
            let same = nvml
                .gpus
                .iter()
                .find(|n| g.uuid.is_some() && n.uuid == g.uuid)
                .or_else(|| nvml.gpus.iter().find(|n| n.index == g.index));
            if let Some(n) = same {
                let fill = |a: &mut Option<f64>, b: Option<f64>| *a = a.or(b);
                fill(&mut g.utilization_pct, n.utilization_pct);
                fill(&mut g.mem_used_mb, n.mem_used_mb);
                fill(&mut g.mem_total_mb, n.mem_total_mb);
                fill(&mut g.temperature_c, n.temperature_c);
                fill(&mut g.power_w, n.power_w);
                fill(&mut g.power_limit_w, n.power_limit_w);
                g.uuid = g.uuid.or_else(|| n.uuid.clone());
                g.name = g.name.or_else(|| n.name.clone());
                g.compute_capability = g
                    .compute_capability
                    .or_else(|| n.compute_capability.clone());
                g.architecture = g.architecture.or_else(|| n.architecture.clone());
                g.flash_attention_supported =
                    g.flash_attention_supported.or(n.flash_attention_supported);
                g.source = "dcgm+nvml".into();
            }
            g
        })
        .collect();
    GpuSet {
        driver_version: dcgm.driver_version.or(nvml.driver_version),
        cuda_version: nvml.cuda_version,
        gpus,
    }
}
