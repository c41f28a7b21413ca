//! Host samples from node_exporter's `/metrics` (`[monitoring] node_exporter_url`), scraped
//! directly: no Prometheus server. Rates come from two consecutive scrapes; CPU use is the
//! non-idle share of each core's seconds over that time.

use super::host::{mib, set_disk, virtual_disk, virtual_interface, DiskRate, HostSample, NetRate};
use super::promtext::Page;
use std::collections::BTreeMap;

/// A scrape's cumulative counters, kept for the next sample's rates.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    at_ms: u64,
    /// By cpu label: (idle + iowait seconds, all seconds).
    cpu: BTreeMap<String, (f64, f64)>,
    /// By device: (read bytes, written bytes).
    disks: BTreeMap<String, (f64, f64)>,
    /// By device: (received bytes, sent bytes).
    ifaces: BTreeMap<String, (f64, f64)>,
}

fn by_label(page: &Page, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for s in page
        .series
        .iter()
        .filter(|s| s.name == name && s.value.is_finite())
    {
        if let Some(v) = s.label(label) {
            *out.entry(v.to_string()).or_default() += s.value;
        }
    }
    out
}

fn pairs(a: BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, (f64, f64)> {
    a.into_iter()
        .filter_map(|(k, x)| Some((k.clone(), (x, *b.get(&k)?))))
        .collect()
}

impl Counters {
    pub fn of(page: &Page, at_ms: u64) -> Counters {
        let mut cpu: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for s in page
            .series
            .iter()
            .filter(|s| s.name == "node_cpu_seconds_total" && s.value.is_finite())
        {
            let (Some(core), Some(mode)) = (s.label("cpu"), s.label("mode")) else {
                continue;
            };
            let e = cpu.entry(core.to_string()).or_default();
            if mode == "idle" || mode == "iowait" {
                e.0 += s.value;
            }
            e.1 += s.value;
        }
        let disks = pairs(
            by_label(page, "node_disk_read_bytes_total", "device"),
            &by_label(page, "node_disk_written_bytes_total", "device"),
        )
        .into_iter()
        .filter(|(d, _)| !virtual_disk(d))
        .collect();
        let ifaces = pairs(
            by_label(page, "node_network_receive_bytes_total", "device"),
            &by_label(page, "node_network_transmit_bytes_total", "device"),
        );
        Counters {
            at_ms,
            cpu,
            disks,
            ifaces,
        }
    }
}

/// A sample from `page` (taken at `now`'s time) with rates since `before`; None when some
/// core's counters did not move (no time passed that could be measured).
pub fn sample(
    page: &Page,
    now: &Counters,
    before: &Counters,
    disk_path: &std::path::Path,
) -> Option<HostSample> {
    let secs = now.at_ms.saturating_sub(before.at_ms) as f64 / 1000.0;
    let rate = |new: f64, old: f64| {
        if secs > 0.0 && new >= old {
            (new - old) / secs
        } else {
            0.0
        }
    };
    let mut cores: Vec<(String, f64)> = now
        .cpu
        .iter()
        .filter_map(|(core, (idle, all))| {
            let (old_idle, old_all) = before.cpu.get(core)?;
            let spent = all - old_all;
            (spent > 0.0).then(|| {
                (
                    core.clone(),
                    (100.0 * (1.0 - (idle - old_idle) / spent)).clamp(0.0, 100.0),
                )
            })
        })
        .collect();
    if cores.is_empty() || cores.len() != now.cpu.len() {
        return None;
    }
    // Cores in numeric order ("10" after "9").
    cores.sort_by_key(|(c, _)| c.parse::<u64>().unwrap_or(u64::MAX));
    let total_mem = page.sum("node_memory_MemTotal_bytes").unwrap_or(0.0);
    let available = page.sum("node_memory_MemAvailable_bytes").unwrap_or(0.0);
    let mut s = HostSample {
        at_ms: now.at_ms,
        cpu_count: now.cpu.len(),
        cpu_util_pct: cores.iter().map(|(_, p)| p).sum::<f64>() / cores.len() as f64,
        cpu_per_core_pct: cores.into_iter().map(|(_, p)| p).collect(),
        load_avg_1m: page.sum("node_load1").unwrap_or(0.0),
        load_avg_5m: page.sum("node_load5").unwrap_or(0.0),
        load_avg_15m: page.sum("node_load15").unwrap_or(0.0),
        mem_total_mb: mib(total_mem),
        mem_used_mb: mib(total_mem - available),
        ..Default::default()
    };
    // The filesystem holding disk_path: the longest mount point above it.
    let mount = page
        .series
        .iter()
        .filter(|x| x.name == "node_filesystem_size_bytes")
        .filter_map(|x| x.label("mountpoint"))
        .filter(|m| disk_path.starts_with(m))
        .max_by_key(|m| m.len());
    let fs = |name: &str| {
        page.series
            .iter()
            .find(|x| x.name == name && x.label("mountpoint") == mount)
            .map(|x| x.value)
    };
    if let (Some(size), Some(avail)) = (
        fs("node_filesystem_size_bytes"),
        fs("node_filesystem_avail_bytes"),
    ) {
        set_disk(&mut s, size, avail);
    }
    for (d, (r, w)) in &now.disks {
        if let Some((old_r, old_w)) = before.disks.get(d) {
            s.disks.insert(
                d.clone(),
                DiskRate {
                    read_bps: rate(*r, *old_r),
                    write_bps: rate(*w, *old_w),
                },
            );
        }
    }
    for (i, (rx, tx)) in &now.ifaces {
        let Some((old_rx, old_tx)) = before.ifaces.get(i) else {
            continue;
        };
        let r = NetRate {
            rx_bps: rate(*rx, *old_rx),
            tx_bps: rate(*tx, *old_tx),
        };
        if !virtual_interface(i) {
            s.net_rx_bps += r.rx_bps;
            s.net_tx_bps += r.tx_bps;
            s.interfaces.insert(i.clone(), r);
        }
    }
    Some(s)
}
