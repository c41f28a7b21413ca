//! The readers against real exports (`tests/fixtures/metrics/`, whose README gives the figures
//! a correct reader computes): vLLM V1 with two data-parallel engines and V0, SGLang with a NaN
//! gauge, llama-server, dcgm-exporter, and two node_exporter scrapes 10 s apart.

use super::dcgm;
use super::engine_figures::{EngineKind, Figures, Reading};
use super::node_exporter::{sample, Counters};
use super::promtext::Page;
use crate::gpu::{GpuSet, GpuStats};

fn page(name: &str) -> Page {
    let path = format!(
        "{}/tests/fixtures/metrics/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    Page::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= 1e-9 * b.abs().max(1.0))
}

#[test]
fn vllm_v1_every_engine_counts() {
    let r = Reading::from_page(&page("vllm_v1.prom"), 0);
    assert_eq!(r.engine, EngineKind::Vllm);
    assert_eq!(
        (r.running, r.waiting, r.swapped),
        (Some(40.0), Some(4.0), None)
    );
    assert!(
        close(r.kv_cache, 0.705_300_988_319_856_2 / 2.0),
        "{:?}",
        r.kv_cache
    );
    assert_eq!(
        (r.prefix_queries, r.prefix_hits),
        (Some(3000671.0), Some(1192160.0))
    );
    assert_eq!(
        (r.prompt_tokens, r.generation_tokens),
        (Some(2997599.0), Some(1259736.0))
    );
    let ttft = r.ttft.as_ref().unwrap();
    assert_eq!((ttft.count, ttft.total()), (3030.0, 3030.0));
    assert!(close(Some(ttft.sum), 2_058.491_961_055_398));
    // p50: rank 1515 lies in (0.25, 0.5] with 1397 below and 2148 at its top.
    assert!(close(ttft.quantile(0.5), 0.25 + 0.25 * 118.0 / 751.0));
    // The e2e p50 is from the buckets (6.26 s), not the mean (27918 / 2990 = 9.3 s).
    let e2e = r.e2e.as_ref().unwrap();
    assert!(close(e2e.quantile(0.5), 5.0 + 5.0 * 201.0 / 800.0));
    assert_eq!(r.itl.as_ref().unwrap().count, 1256706.0);
    // Lifetime hit ratio, as a window from nothing.
    let nothing = Reading::from_page(&Page::default(), 0);
    let f = Figures::over(&[nothing, Reading { at_ms: 1000, ..r }]).unwrap();
    assert!(close(f.prefix_hit_rate, 1192160.0 / 3000671.0));
}

#[test]
fn vllm_v0_names_are_read() {
    let r = Reading::from_page(&page("vllm_v0.prom"), 0);
    assert_eq!(
        (r.running, r.waiting, r.swapped),
        (Some(31.0), Some(6.0), Some(0.0))
    );
    assert!(close(r.kv_cache, 0.40830449826989623));
    assert_eq!(r.cpu_cache, Some(0.0));
    assert!(close(r.hit_rate, 0.351723280867102));
    assert_eq!(
        (r.prompt_tokens, r.generation_tokens),
        (Some(5786767.0), Some(3111011.0))
    );
    assert_eq!(r.e2e.unwrap().count, 9253.0);
    // V0 has no inter_token_latency: time_per_output_token is read instead.
    assert_eq!(r.itl.unwrap().count, 3101727.0);
}

#[test]
fn sglang_maps_to_the_same_fields_and_skips_nan() {
    let r = Reading::from_page(&page("sglang.prom"), 0);
    assert_eq!(r.engine, EngineKind::Sglang);
    assert_eq!((r.running, r.waiting), (Some(23.0), Some(3.0)));
    assert!(close(r.kv_cache, 0.633_899_570_790_557_4 / 2.0));
    // One rank's hit rate is NaN: the other's is the answer, not NaN and not 0.
    assert!(close(r.hit_rate, 0.6131264367816092));
    assert_eq!(
        (r.prompt_tokens, r.generation_tokens),
        (Some(4719253.0), Some(2213478.0))
    );
    assert_eq!(r.prefix_hits, Some(2837104.0));
    assert_eq!(r.ttft.unwrap().count, 6141.0);
    assert_eq!(r.itl.unwrap().count, 2211456.0);
    assert_eq!(r.e2e.unwrap().count, 6118.0);
}

#[test]
fn llamacpp_maps_what_it_has() {
    let r = Reading::from_page(&page("llamacpp.prom"), 0);
    assert_eq!(r.engine, EngineKind::Llamacpp);
    assert_eq!((r.running, r.waiting), (Some(3.0), Some(1.0)));
    assert_eq!(
        (r.prompt_tokens, r.generation_tokens),
        (Some(1843270.0), Some(612904.0))
    );
    assert!(r.ttft.is_none() && r.e2e.is_none() && r.kv_cache.is_none());
}

#[test]
fn dcgm_gpus_by_their_labels_and_merged_with_nvml_by_uuid() {
    let set = dcgm::from_page(&page("dcgm.prom"));
    assert_eq!(set.driver_version.as_deref(), Some("570.133.20"));
    assert_eq!(set.gpus.len(), 2);
    let g0 = &set.gpus[0];
    assert_eq!(g0.name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    assert_eq!(
        (g0.utilization_pct, g0.temperature_c),
        (Some(87.0), Some(54.0))
    );
    assert!(close(g0.power_w, 512.337));
    // No FB_TOTAL in the default counters: used + free + reserved.
    assert_eq!(
        (g0.mem_used_mb, g0.mem_total_mb),
        (Some(73589.0), Some(81559.0))
    );
    assert_eq!(set.gpus[1].mem_total_mb, Some(81559.0));
    // NVML lists the same GPUs in another order: matched by UUID, never by position.
    let uuid = |i: usize| set.gpus[i].uuid.clone();
    let nvml = GpuSet {
        driver_version: Some("570.133.20".into()),
        cuda_version: Some("12.8".into()),
        gpus: vec![
            GpuStats {
                index: 0,
                uuid: uuid(1),
                compute_capability: Some("9.0".into()),
                architecture: Some("Hopper".into()),
                power_limit_w: Some(600.0),
                ..Default::default()
            },
            GpuStats {
                index: 1,
                uuid: uuid(0),
                compute_capability: Some("10.0".into()),
                architecture: Some("Blackwell".into()),
                power_limit_w: Some(700.0),
                ..Default::default()
            },
        ],
    };
    let merged = dcgm::merge(set.clone(), Some(nvml));
    assert_eq!(merged.cuda_version.as_deref(), Some("12.8"));
    assert_eq!(merged.gpus[0].architecture.as_deref(), Some("Blackwell"));
    assert_eq!(merged.gpus[0].power_limit_w, Some(700.0));
    assert_eq!(
        merged.gpus[0].utilization_pct,
        Some(87.0),
        "DCGM's figures stay"
    );
    assert_eq!(merged.gpus[1].architecture.as_deref(), Some("Hopper"));
    assert_eq!(merged.gpus[0].source, "dcgm+nvml");
}

#[test]
fn node_exporter_rates_over_two_scrapes() {
    let (a, b) = (page("node_exporter_a.prom"), page("node_exporter_b.prom"));
    let (ca, cb) = (Counters::of(&a, 1_000_000), Counters::of(&b, 1_010_000));
    let s = sample(&b, &cb, &ca, std::path::Path::new("/var/lib/models")).unwrap();
    assert_eq!(s.cpu_count, 4);
    // Idle and iowait are idle time (as /proc-based tools count them).
    let cores = [58.0, 92.0, 15.0, 30.0];
    for (got, want) in s.cpu_per_core_pct.iter().zip(cores) {
        assert!((got - want).abs() < 1e-6, "{:?}", s.cpu_per_core_pct);
    }
    assert!((s.cpu_util_pct - 48.75).abs() < 1e-6);
    assert_eq!((s.load_avg_1m, s.load_avg_5m), (3.41, 2.93));
    let mib = |b: f64| b / 1048576.0;
    assert!(close(Some(s.mem_total_mb), mib(67277438976.0)));
    assert!(close(
        Some(s.mem_used_mb),
        mib(67277438976.0 - 42211606528.0)
    ));
    // /var/lib/models is on "/" (the longest mount point above it).
    let used_pct = 100.0 * (1005342785536.0 - 612304719872.0) / 1005342785536.0;
    assert!(close(s.disk_used_pct, used_pct));
    // Physical interfaces only, in the totals and each.
    assert!(close(Some(s.net_rx_bps), 5_000_000.0) && close(Some(s.net_tx_bps), 1_200_000.0));
    assert_eq!(s.interfaces.keys().collect::<Vec<_>>(), ["eth0"]);
    // No time measured (the same scrape twice): no sample rather than a 0% CPU one.
    assert!(sample(&b, &cb, &cb, std::path::Path::new("/")).is_none());
    // Disks: loop and device-mapper devices are left out (dm-0's I/O is nvme0n1's).
    assert_eq!(s.disks.keys().collect::<Vec<_>>(), ["nvme0n1"]);
    assert!(close(Some(s.disks["nvme0n1"].read_bps), 2_048_000.0));
    assert!(close(Some(s.disks["nvme0n1"].write_bps), 4_096_000.0));
}

#[test]
fn mig_instances_add_up_and_a_foreign_uuid_is_not_matched_by_index() {
    let page = Page::parse(
        "DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\",GPU_I_ID=\"1\"} 10000\n\
         DCGM_FI_DEV_FB_USED{gpu=\"0\",UUID=\"GPU-a\",GPU_I_ID=\"2\"} 20000\n\
         DCGM_FI_DEV_FB_FREE{gpu=\"0\",UUID=\"GPU-a\",GPU_I_ID=\"1\"} 5000\n\
         DCGM_FI_DEV_FB_FREE{gpu=\"0\",UUID=\"GPU-a\",GPU_I_ID=\"2\"} 5000\n\
         DCGM_FI_DEV_GPU_TEMP{gpu=\"0\",UUID=\"GPU-a\",GPU_I_ID=\"1\"} 50\n\
         DCGM_FI_DEV_GPU_TEMP{gpu=\"0\",UUID=\"GPU-a\",GPU_I_ID=\"2\"} 50\n",
    )
    .unwrap();
    let set = dcgm::from_page(&page);
    assert_eq!(set.gpus.len(), 1);
    assert_eq!(
        (set.gpus[0].mem_used_mb, set.gpus[0].mem_total_mb),
        (Some(30000.0), Some(40000.0))
    );
    assert_eq!(set.gpus[0].temperature_c, Some(50.0));
    // NVML in a container numbers its own GPU 0: another UUID, so nothing is taken from it.
    let nvml = GpuSet {
        gpus: vec![GpuStats {
            index: 0,
            uuid: Some("GPU-b".into()),
            architecture: Some("Ampere".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let merged = dcgm::merge(set, Some(nvml));
    assert_eq!(
        (
            merged.gpus[0].architecture.as_ref(),
            merged.gpus[0].source.as_str()
        ),
        (None, "dcgm")
    );
}
