//! Host samples taken in-process with `sysinfo` (from `/proc` and `/sys`): no exporter needed.
//! Rates (CPU, disk and network bytes) cover the time since the previous sample, so the first
//! sample comes one short interval after the sampler is made, never from a blocking wait in a
//! request.

use super::host::{mib, set_disk, virtual_disk, virtual_interface, DiskRate, HostSample, NetRate};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System,
};

/// The in-process sampler (not `Sync`: one owner takes its samples).
pub struct LocalHost {
    system: System,
    disks: Disks,
    networks: Networks,
    disk_path: PathBuf,
    /// When the counters were last read.
    last: Instant,
}

/// Why the host cannot be sampled in-process (e.g. `/proc` missing).
#[derive(Debug, thiserror::Error)]
#[error("host figures unavailable: {0}")]
pub struct LocalHostError(String);

impl LocalHost {
    /// Read every counter once (the base of the first sample's rates).
    pub fn new(disk_path: &Path) -> Result<Self, LocalHostError> {
        // A symlinked path is measured where it leads.
        let disk_path =
            std::fs::canonicalize(disk_path).unwrap_or_else(|_| disk_path.to_path_buf());
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        )
        .map_err(|e| LocalHostError(e.to_string()))?;
        let disks = Disks::new_with_refreshed_list_specifics(
            DiskRefreshKind::nothing().with_storage().with_io_usage(),
        )
        .map_err(|e| LocalHostError(e.to_string()))?;
        let networks =
            Networks::new_with_refreshed_list().map_err(|e| LocalHostError(e.to_string()))?;
        Ok(Self {
            system,
            disks,
            networks,
            disk_path,
            last: Instant::now(),
        })
    }

    /// Read every counter without making a sample: the base of the next sample's rates (after
    /// a time the counters were not read, e.g. while node_exporter answered).
    pub fn rebase(&mut self) {
        self.read_counters();
    }

    /// Refresh what rates come from; the seconds since the previous refresh.
    fn read_counters(&mut self) -> f64 {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        // The mount list, then each disk's I/O counters, and the size of disk_path's filesystem
        // only (statvfs on every mount could hang on a dead network or FUSE mount).
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing());
        let target = self.target_disk();
        for (i, d) in self.disks.iter_mut().enumerate() {
            let kind = DiskRefreshKind::nothing().with_io_usage();
            d.refresh_specifics(if Some(i) == target {
                kind.with_storage()
            } else {
                kind
            });
        }
        self.networks.refresh(true);
        let secs = self.last.elapsed().as_secs_f64().max(0.001);
        self.last = Instant::now();
        secs
    }

    /// The filesystem holding disk_path: the longest mount point above it.
    fn target_disk(&self) -> Option<usize> {
        self.disks
            .iter()
            .enumerate()
            .filter(|(_, d)| self.disk_path.starts_with(d.mount_point()))
            .max_by_key(|(_, d)| d.mount_point().as_os_str().len())
            .map(|(i, _)| i)
    }

    /// A sample of now, with rates since the previous call (or since `new` or `rebase`).
    pub fn sample(&mut self, at_ms: u64) -> HostSample {
        let secs = self.read_counters();

        let cores: Vec<f64> = self
            .system
            .cpus()
            .iter()
            .map(|c| f64::from(c.usage()))
            .collect();
        let load = System::load_average().unwrap_or(sysinfo::LoadAvg {
            one: 0.0,
            five: 0.0,
            fifteen: 0.0,
        });
        let total = self.system.total_memory() as f64;
        let mut s = HostSample {
            at_ms,
            cpu_count: cores.len(),
            cpu_util_pct: f64::from(self.system.global_cpu_usage()).clamp(0.0, 100.0),
            cpu_per_core_pct: cores,
            load_avg_1m: load.one,
            load_avg_5m: load.five,
            load_avg_15m: load.fifteen,
            mem_total_mb: mib(total),
            mem_used_mb: mib(total - self.system.available_memory() as f64),
            ..Default::default()
        };
        if let Some(d) = self.target_disk().map(|i| &self.disks[i]) {
            set_disk(&mut s, d.total_space() as f64, d.available_space() as f64);
        }
        let mut disks: BTreeMap<String, DiskRate> = BTreeMap::new();
        for d in self.disks.iter() {
            let name = d.name().to_string_lossy();
            let Some(dev) = name.strip_prefix("/dev/") else {
                continue; // overlay, tmpfs and other filesystems without a block device
            };
            if virtual_disk(dev) {
                continue;
            }
            let u = d.usage();
            // A device mounted twice (bind mounts) is counted once.
            disks.entry(dev.to_string()).or_insert(DiskRate {
                read_bps: u.read_bytes as f64 / secs,
                write_bps: u.written_bytes as f64 / secs,
            });
        }
        s.disks = disks;
        for (name, data) in self.networks.iter() {
            let name = name.to_string_lossy();
            let rate = NetRate {
                rx_bps: data.received() as f64 / secs,
                tx_bps: data.transmitted() as f64 / secs,
            };
            if !virtual_interface(&name) {
                s.net_rx_bps += rate.rx_bps;
                s.net_tx_bps += rate.tx_bps;
                s.interfaces.insert(name.into_owned(), rate);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Figures agree with what `/proc` says right now.
    #[test]
    fn samples_agree_with_proc() {
        let mut host = LocalHost::new(Path::new("/")).unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = host.sample(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib = |key: &str| -> f64 {
            let line = meminfo.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        assert!(
            (s.mem_total_mb - kib("MemTotal:") / 1024.0).abs() < 1.0,
            "{s:?}"
        );
        let used = (kib("MemTotal:") - kib("MemAvailable:")) / 1024.0;
        // Memory moves between the two reads; within 5% of the total.
        assert!(
            (s.mem_used_mb - used).abs() < s.mem_total_mb * 0.05,
            "{} vs {used}",
            s.mem_used_mb
        );
        let cpus = std::fs::read_to_string("/proc/stat")
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        assert_eq!((s.cpu_count, s.cpu_per_core_pct.len()), (cpus, cpus));
        assert!((0.0..=100.0).contains(&s.cpu_util_pct));
        let load1: f64 = std::fs::read_to_string("/proc/loadavg")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (s.load_avg_1m - load1).abs() < 1.0,
            "{} vs {load1}",
            s.load_avg_1m
        );
        let (total, used) = (s.disk_total_gb.unwrap(), s.disk_used_gb.unwrap());
        assert!(total > 0.0 && used >= 0.0 && used <= total);
        assert!(s.net_rx_bps >= 0.0 && !s.interfaces.contains_key("lo"));
        // A rebase reads the counters without a sample; the next sample has rates again.
        host.rebase();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        assert!((0.0..=100.0).contains(&host.sample(2).cpu_util_pct));
    }
}
