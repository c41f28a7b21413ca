//! GPUs from dcgm-exporter's page, by its real names: one series per GPU labelled `gpu` (the
//! index), `UUID` and `modelName`; memory in MiB as `DCGM_FI_DEV_FB_USED` and `_FB_FREE` (the
//! default counters have no `FB_TOTAL`: the total is used + free + reserved; a GPU split by MIG
//! has one memory series per instance, added up). NVML's figures of the same GPU (matched by
//! UUID; by index only when a side has none; never by list position) fill what DCGM lacks.

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
        let Some(v) = Some(s.value).filter(|v| v.is_finite()) else {
            continue;
        };
        // Device-wide figures: the first series of the GPU says it (MIG instances repeat it).
        let first = |field: &mut Option<f64>| *field = field.or(Some(v));
        // Memory: one series per MIG instance (GPU_I_ID), each with its own share: added up.
        let mut add = |i: usize| {
            let slot = &mut fb.entry(index).or_default()[i];
            *slot = Some(slot.unwrap_or(0.0) + v);
        };
        match s.name.as_str() {
            "DCGM_FI_DEV_GPU_UTIL" => first(&mut g.utilization_pct),
            "DCGM_FI_DEV_GPU_TEMP" => first(&mut g.temperature_c),
            "DCGM_FI_DEV_POWER_USAGE" => first(&mut g.power_w),
            "DCGM_FI_DEV_POWER_MGMT_LIMIT" => first(&mut g.power_limit_w),
            "DCGM_FI_DEV_FB_USED" => add(0),
            "DCGM_FI_DEV_FB_FREE" => add(1),
            "DCGM_FI_DEV_FB_RESERVED" => add(2),
            "DCGM_FI_DEV_FB_TOTAL" => add(3),
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
            // By UUID; by index only when a side has no UUID (NVML in a container numbers
            // its own GPUs from 0 while DCGM sees the node's).
            let same = match &g.uuid {
                Some(u) => nvml.gpus.iter().find(|n| n.uuid.as_ref() == Some(u)),
                None => None,
            }
            .or_else(|| {
                nvml.gpus
                    .iter()
                    .find(|n| n.index == g.index && (g.uuid.is_none() || n.uuid.is_none()))
            });
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
