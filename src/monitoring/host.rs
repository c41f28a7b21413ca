//! Host figures (CPU, load, memory, disk, network; per core, per disk, per interface) as
//! samples, whichever provider took them, and the ring of past samples that trends are read
//! from. A trend holds only samples that were taken: where there are none, it is shorter.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Read and write bytes per second of one disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DiskRate {
    pub read_bps: f64,
    pub write_bps: f64,
}

/// Received and sent bytes per second of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NetRate {
    pub rx_bps: f64,
    pub tx_bps: f64,
}

/// One sample of the host. Rates cover the time since the provider's previous reading.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HostSample {
    /// Unix ms when it was taken.
    pub at_ms: u64,
    pub cpu_count: usize,
    pub cpu_util_pct: f64,
    /// By core, in the kernel's order.
    pub cpu_per_core_pct: Vec<f64>,
    pub load_avg_1m: f64,
    pub load_avg_5m: f64,
    pub load_avg_15m: f64,
    pub mem_total_mb: f64,
    /// Total minus available (the page cache the kernel can drop is not "used").
    pub mem_used_mb: f64,
    /// The filesystem at `[monitoring] disk_path` (None: not found).
    pub disk_total_gb: Option<f64>,
    pub disk_used_gb: Option<f64>,
    pub disk_used_pct: Option<f64>,
    /// Physical interfaces only (not `lo`, bridges, veths, tunnels, bonds, VLANs, CNI
    /// devices: see `virtual_interface`).
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
    /// By block device (in-process: the mounted ones, e.g. `nvme0n1p2`; node_exporter: whole
    /// disks); loop, RAM and device-mapper devices are left out.
    pub disks: BTreeMap<String, DiskRate>,
    /// The physical interfaces of the totals, each.
    pub interfaces: BTreeMap<String, NetRate>,
}

/// Whether an interface is virtual or an aggregate (left out: its bytes are counted on the
/// physical interfaces, or never leave the machine). A bond's members are counted, not the
/// bond; a VLAN (`eth0.10`) is counted on its interface.
pub fn virtual_interface(name: &str) -> bool {
    name == "lo"
        || name.contains(['.', '@'])
        || [
            "docker",
            "veth",
            "br-",
            "br0",
            "virbr",
            "cni",
            "flannel",
            "cali",
            "cilium",
            "lxc",
            "kube-",
            "vxlan",
            "tun",
            "tap",
            "wg",
            "bond",
            "team",
            "ifb",
            "dummy",
            "genev",
            "nodelocaldns",
            "tailscale",
            "zt",
        ]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Whether a block device is a loop, RAM or device-mapper device (left out: its I/O is
/// counted on the disks under it, or is not disk I/O).
pub fn virtual_disk(name: &str) -> bool {
    ["loop", "ram", "dm-", "zram"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Bytes to MiB and GiB.
pub fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

pub fn gib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0 * 1024.0)
}

/// Disk figures from a filesystem's size and available bytes.
pub fn set_disk(s: &mut HostSample, total: f64, available: f64) {
    if total > 0.0 {
        s.disk_total_gb = Some(gib(total));
        s.disk_used_gb = Some(gib(total - available));
        s.disk_used_pct = Some(100.0 * (total - available) / total);
    }
}

/// One point of a trend.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// Unix seconds of the newest sample in the step.
    pub ts: f64,
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReadWrite {
    pub read: Vec<Point>,
    pub write: Vec<Point>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RxTx {
    pub rx: Vec<Point>,
    pub tx: Vec<Point>,
}

/// Host series over a window, one point per step that has samples (the mean of its samples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HostTrends {
    /// The window and step served (after clamping).
    pub minutes: u64,
    pub step_s: u64,
    pub cpu_util_pct: Vec<Point>,
    pub mem_used_mb: Vec<Point>,
    pub disk_used_pct: Vec<Point>,
    pub net_rx_bps: Vec<Point>,
    pub net_tx_bps: Vec<Point>,
    /// By core index ("0", "1", …).
    pub cpu_per_core_pct: BTreeMap<String, Vec<Point>>,
    pub disk_rw_bps: BTreeMap<String, ReadWrite>,
    pub net_per_iface_bps: BTreeMap<String, RxTx>,
}

/// Past samples, oldest first, at most `capacity`.
pub struct History {
    samples: Mutex<VecDeque<HostSample>>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&self, s: HostSample) {
        if let Ok(mut q) = self.samples.lock() {
            if q.len() == self.capacity {
                q.pop_front();
            }
            q.push_back(s);
        }
    }

    pub fn latest(&self) -> Option<HostSample> {
        self.samples.lock().ok()?.back().cloned()
    }

    /// The samples of the last `minutes` before `now_ms`, reduced to one point per `step_s`.
    pub fn trends(&self, now_ms: u64, minutes: u64, step_s: u64) -> HostTrends {
        let start = now_ms.saturating_sub(minutes * 60_000);
        let step_ms = step_s.max(1) * 1000;
        let mut t = HostTrends {
            minutes,
            step_s,
            ..Default::default()
        };
        let Ok(q) = self.samples.lock() else {
            return t;
        };
        let in_window: Vec<&HostSample> = q
            .iter()
            .filter(|s| s.at_ms > start && s.at_ms <= now_ms)
            .collect();
        // Steps aligned to the clock (not to the request's now), so points stay put between
        // calls.
        for group in in_window.chunk_by(|a, b| a.at_ms / step_ms == b.at_ms / step_ms) {
            let ts = group.last().map_or(0.0, |s| s.at_ms as f64 / 1000.0);
            let mean = |f: &dyn Fn(&HostSample) -> Option<f64>| {
                let (n, sum) = group
                    .iter()
                    .filter_map(|s| f(s))
                    .fold((0u32, 0.0), |(n, t), v| (n + 1, t + v));
                (n > 0).then(|| Point {
                    ts,
                    value: sum / f64::from(n),
                })
            };
            t.cpu_util_pct.extend(mean(&|s| Some(s.cpu_util_pct)));
            t.mem_used_mb.extend(mean(&|s| Some(s.mem_used_mb)));
            t.disk_used_pct.extend(mean(&|s| s.disk_used_pct));
            t.net_rx_bps.extend(mean(&|s| Some(s.net_rx_bps)));
            t.net_tx_bps.extend(mean(&|s| Some(s.net_tx_bps)));
            let cores = group
                .iter()
                .map(|s| s.cpu_per_core_pct.len())
                .max()
                .unwrap_or(0);
            for i in 0..cores {
                if let Some(p) = mean(&|s| s.cpu_per_core_pct.get(i).copied()) {
                    t.cpu_per_core_pct.entry(i.to_string()).or_default().push(p);
                }
            }
            let disks: std::collections::BTreeSet<&String> =
                group.iter().flat_map(|s| s.disks.keys()).collect();
            for d in disks {
                let e = t.disk_rw_bps.entry(d.clone()).or_default();
                e.read.extend(mean(&|s| s.disks.get(d).map(|r| r.read_bps)));
                e.write
                    .extend(mean(&|s| s.disks.get(d).map(|r| r.write_bps)));
            }
            let ifaces: std::collections::BTreeSet<&String> =
                group.iter().flat_map(|s| s.interfaces.keys()).collect();
            for i in ifaces {
                let e = t.net_per_iface_bps.entry(i.clone()).or_default();
                e.rx.extend(mean(&|s| s.interfaces.get(i).map(|r| r.rx_bps)));
                e.tx.extend(mean(&|s| s.interfaces.get(i).map(|r| r.tx_bps)));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, cpu: f64) -> HostSample {
        HostSample {
            at_ms,
            cpu_util_pct: cpu,
            cpu_per_core_pct: vec![cpu, cpu / 2.0],
            interfaces: [(
                "eth0".to_string(),
                NetRate {
                    rx_bps: cpu,
                    tx_bps: 1.0,
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn trends_have_only_the_samples_taken() {
        let h = History::new(100);
        // Samples every 5 s for 20 s, starting 60 s before now; none since.
        for i in 0..5u64 {
            h.push(sample(1_000_000 + i * 5_000, 10.0 * i as f64));
        }
        let now = 1_060_000;
        let t = h.trends(now, 15, 10);
        // Steps of 10 s from now - 15 min: samples at +0,+5 | +10,+15 | +20 fall in 3 steps.
        assert_eq!(t.cpu_util_pct.len(), 3, "{:?}", t.cpu_util_pct);
        assert!(t.cpu_util_pct.iter().all(|p| p.ts <= 1_020.0));
        let values: Vec<f64> = t.cpu_util_pct.iter().map(|p| p.value).collect();
        assert_eq!(values.iter().sum::<f64>(), 5.0 + 25.0 + 40.0);
        assert_eq!(t.cpu_per_core_pct["1"].len(), 3);
        assert_eq!(t.net_per_iface_bps["eth0"].rx.len(), 3);
        // Nothing in the last minute: an empty series, not a padded one.
        let recent = h.trends(now + 600_000, 1, 5);
        assert!(recent.cpu_util_pct.is_empty() && recent.cpu_per_core_pct.is_empty());
        // The ring keeps its capacity.
        let small = History::new(2);
        for i in 0..5 {
            small.push(sample(i, 0.0));
        }
        assert_eq!(small.trends(10, 1, 5).cpu_util_pct.len(), 1);
        assert_eq!(small.latest().unwrap().at_ms, 4);
    }

    #[test]
    fn virtual_devices_are_told_apart() {
        assert!(
            virtual_interface("lo")
                && virtual_interface("veth12ab")
                && virtual_interface("docker0")
        );
        assert!(!virtual_interface("eth0") && !virtual_interface("enp3s0"));
        assert!(virtual_disk("loop3") && virtual_disk("dm-0") && !virtual_disk("nvme0n1"));
    }
}
