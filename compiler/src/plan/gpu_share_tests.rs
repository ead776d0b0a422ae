//! GPU shares in the cost model (SPEC 10.7): model nodes packed onto MIG instances or side by
//! side under MPS, by compute share and memory. Hand-worked cases, then brute force: on random
//! small pipelines of GPU-only nodes every assignment of nodes to instances and batch sizes is
//! enumerated and judged from the profile and the target alone (not from the planner's
//! options); the planner must reach ≥ 99% of the best throughput.

use mars_plan::{DeviceProfile, Gpu, MigSlice, Target, Worker};

use super::testkit::{device, pipeline, profile, spec, Rng};
use super::*;

fn gpu_target(gpu: Gpu) -> Target {
    Target {
        mars_target: 1,
        workers: vec![Worker {
            name: "w0".into(),
            cpus: 4.0,
            memory_gb: 0.0,
            gpus: vec![gpu],
        }],
    }
}

fn a100(mig: &[(&str, u32)], mps: bool) -> Gpu {
    Gpu {
        name: "gpu0".into(),
        memory_gb: 80.0,
        share: 1.0,
        mig: mig
            .iter()
            .map(|&(p, c)| MigSlice {
                profile: p.into(),
                count: c,
            })
            .collect(),
        mps,
    }
}

fn gpu_only(batch: &[u32], latency: &[f64], memory: &[f64], sm_share: f64) -> DeviceProfile {
    DeviceProfile {
        memory_mb: Some(memory.to_vec()),
        sm_share: Some(sm_share),
        ..device(batch, latency)
    }
}

fn plan_of(n: usize, devs: &[DeviceProfile], t: &Target) -> Plan {
    let specs: Vec<_> = (0..n)
        .map(|i| {
            let id = format!("m{i}");
            let preds: Vec<usize> = if i == 0 { vec![] } else { vec![i - 1] };
            spec(&id, &preds)
        })
        .collect();
    let p = pipeline(&specs, &[]);
    let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    let entries: Vec<_> = ids
        .iter()
        .zip(devs)
        .map(|(id, d)| (id.as_str(), None, Some(d.clone())))
        .collect();
    let prof = profile(&entries);
    plan_pipeline(&p, Some(&prof), t, &PlanOptions::default()).expect("plans")
}

#[test]
fn two_small_models_share_a_gpu_twice_as_fast_under_mps_or_mig() {
    // Two models of 10 ms a batch of 1, each filling 40% of the GPU's compute.
    let devs = vec![gpu_only(&[1], &[10.0], &[1000.0], 0.4); 2];
    // Taking turns: X·(0.01 + 0.01) ≤ 1 → 50/s.
    let whole = plan_of(2, &devs, &gpu_target(a100(&[], false)));
    assert_eq!(whole.predicted.throughput, 50.0);
    assert!(whole.gpu_shares.is_empty());
    // MPS: side by side, X·(0.01·0.4 + 0.01·0.4) ≤ 1 → 125/s; each gets 40% of the threads.
    let mps = plan_of(2, &devs, &gpu_target(a100(&[], true)));
    assert_eq!(mps.predicted.throughput, 125.0);
    assert_eq!(mps.gpu_shares.len(), 2);
    assert!(mps
        .gpu_shares
        .iter()
        .all(|s| s.mps_percent == Some(40) && s.gpu == "gpu0"));
    // MIG, two 3g.40gb instances (3/7 of the compute each): a model that fills 40% runs at
    // full speed on one, so each has its own: X·0.01 ≤ 1 → 100/s, twice the whole GPU.
    let mig = plan_of(2, &devs, &gpu_target(a100(&[("3g.40gb", 2)], false)));
    assert_eq!(mig.predicted.throughput, 100.0);
    let gpus: Vec<_> = mig
        .nodes
        .iter()
        .map(|n| n.gpu.clone().expect("on a gpu"))
        .collect();
    assert_eq!(gpus, ["gpu0.mig0", "gpu0.mig1"]);
    assert!(mig
        .gpu_shares
        .iter()
        .all(|s| s.mig.as_deref() == Some("3g.40gb")));
    // On 1g.10gb instances (1/7) the same model runs 0.4·7 = 2.8× slower: 28 ms, 35.7/s.
    let small = plan_of(1, &devs[..1], &gpu_target(a100(&[("1g.10gb", 7)], false)));
    assert_eq!(small.nodes[0].predicted.latency_ms, 28.0);
    assert_eq!(small.predicted.throughput, 35.714);
}

#[test]
fn memory_keeps_a_model_off_an_instance_too_small_for_it() {
    // 12 GB of weights: only the 3g.40gb instance holds it, however slow the 1g ones would be.
    let devs = vec![gpu_only(&[1], &[10.0], &[12_000.0], 0.1)];
    let plan = plan_of(
        1,
        &devs,
        &gpu_target(a100(&[("1g.10gb", 4), ("3g.40gb", 1)], false)),
    );
    assert_eq!(plan.nodes[0].gpu.as_deref(), Some("gpu0.mig4"));
    assert_eq!(plan.gpu_shares[0].mig.as_deref(), Some("3g.40gb"));
}

/// A GPU of the brute force's own reading: compute share of the physical GPU, share the plan
/// may use, memory (MB), whether MPS shares it.
struct Slot {
    speed: f64,
    share: f64,
    memory_mb: f64,
    mps: bool,
}

fn slots(g: &Gpu) -> Vec<Slot> {
    if g.mig.is_empty() {
        return vec![Slot {
            speed: 1.0,
            share: g.share,
            memory_mb: g.memory_gb * 1024.0,
            mps: g.mps,
        }];
    }
    let mut out = Vec::new();
    for m in &g.mig {
        let (s, gb) = MigSlice::parse(&m.profile).expect("valid profile");
        for _ in 0..m.count {
            out.push(Slot {
                speed: f64::from(s) / 7.0,
                share: g.share,
                memory_mb: gb * 1024.0,
                mps: false,
            });
        }
    }
    out
}

/// The best throughput of any assignment (slot, batch size) per node, from the profile and
/// the GPU alone; 0 when nothing fits.
fn brute_force(devs: &[DeviceProfile], g: &Gpu) -> f64 {
    let slots = slots(g);
    let choices: Vec<Vec<(usize, usize)>> = devs
        .iter()
        .map(|d| {
            (0..slots.len())
                .flat_map(|s| (0..d.batch.len()).map(move |k| (s, k)))
                .collect()
        })
        .collect();
    let mut best: f64 = 0.0;
    let mut idx = vec![0usize; devs.len()];
    loop {
        // Per node: busy replicas per request/s, GPU load per request/s, memory a replica.
        let per: Vec<(usize, f64, f64, f64)> = idx
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let (s, k) = choices[i][c];
                let d = &devs[i];
                let c_share = d.sm_share.unwrap_or(1.0);
                let slow = (c_share / slots[s].speed).max(1.0);
                let u = d.latency_ms[k] * slow / (1000.0 * f64::from(d.batch[k]));
                let load = if slots[s].mps { u * c_share } else { u };
                let mem = d.memory_mb.as_ref().map_or(0.0, |m| m[k]);
                (s, u, load, mem)
            })
            .collect();
        let fits = |x: f64| {
            (0..slots.len()).all(|s| {
                let on: Vec<_> = per.iter().filter(|p| p.0 == s).collect();
                let load: f64 = on.iter().map(|p| x * p.2).sum();
                let mem: f64 = on
                    .iter()
                    .map(|p| ((x * p.1 * (1.0 - 1e-12)).ceil().max(1.0)) * p.3)
                    .sum();
                load <= slots[s].share * (1.0 + 1e-12) && mem <= slots[s].memory_mb
            }) && per.iter().all(|p| x * p.1 <= 64.0)
        };
        if fits(1e-9) {
            let (mut lo, mut hi) = (1e-9, 1e7);
            for _ in 0..100 {
                let mid = 0.5 * (lo + hi);
                if fits(mid) {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            best = best.max(lo);
        }
        // Next assignment.
        let mut i = 0;
        loop {
            if i == idx.len() {
                return best;
            }
            idx[i] += 1;
            if idx[i] < choices[i].len() {
                break;
            }
            idx[i] = 0;
            i += 1;
        }
    }
}

#[test]
fn packing_matches_brute_force_on_random_gpus() {
    let mut rng = Rng(0x6d69_6731);
    let profiles = ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"];
    let mut cases = 0;
    let mut mps_cases = 0;
    for _ in 0..120 {
        let n = 1 + rng.below(3) as usize;
        let devs: Vec<DeviceProfile> = (0..n)
            .map(|_| {
                let sizes: Vec<u32> = if rng.chance(0.5) { vec![1] } else { vec![1, 4] };
                let base = rng.float(1.0, 20.0);
                let lat: Vec<f64> = sizes
                    .iter()
                    .map(|&b| base * (1.0 + 0.6 * f64::from(b - 1)))
                    .collect();
                let mem = rng.float(500.0, 30_000.0);
                let mems: Vec<f64> = sizes.iter().map(|&b| mem + 100.0 * f64::from(b)).collect();
                gpu_only(&sizes, &lat, &mems, rng.float(0.05, 1.0))
            })
            .collect();
        // A MIG layout that fits seven slices, or a whole GPU with or without MPS.
        let gpu = if rng.chance(0.6) {
            let mut left = 7u32;
            let mut mig: Vec<(&str, u32)> = Vec::new();
            while left > 0 && mig.len() < 3 {
                let p = profiles[rng.below(profiles.len() as u64) as usize];
                let (s, _) = MigSlice::parse(p).expect("valid");
                if s > left {
                    break;
                }
                let count = 1 + rng.below(u64::from(left / s)) as u32;
                left -= s * count;
                mig.push((p, count));
            }
            if mig.is_empty() {
                mig.push(("1g.10gb", 1));
            }
            let mem: f64 = mig
                .iter()
                .map(|(p, c)| MigSlice::parse(p).expect("valid").1 * f64::from(*c))
                .sum();
            Gpu {
                memory_gb: mem.max(80.0),
                ..a100(&mig, false)
            }
        } else {
            let mps = rng.chance(0.5);
            mps_cases += usize::from(mps);
            a100(&[], mps)
        };
        let optimum = brute_force(&devs, &gpu);
        let t = gpu_target(gpu);
        let specs: Vec<_> = (0..n)
            .map(|i| spec(&format!("m{i}"), &if i == 0 { vec![] } else { vec![i - 1] }))
            .collect();
        let p = pipeline(&specs, &[]);
        let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let entries: Vec<_> = ids
            .iter()
            .zip(&devs)
            .map(|(id, d)| (id.as_str(), None, Some(d.clone())))
            .collect();
        let prof = profile(&entries);
        match plan_pipeline(&p, Some(&prof), &t, &PlanOptions::default()) {
            Ok(plan) => {
                assert!(
                    optimum > 0.0,
                    "planned where nothing fits: {}",
                    plan.to_yaml()
                );
                let got = plan.predicted.throughput;
                assert!(
                    got >= 0.99 * optimum - 1e-3,
                    "planner {got} < brute force {optimum}\n{}",
                    plan.to_yaml()
                );
                assert!(
                    got <= optimum * 1.001 + 1e-3,
                    "planner {got} > brute force {optimum}"
                );
                cases += 1;
            }
            Err(e) => assert_eq!(
                optimum, 0.0,
                "no plan but brute force found {optimum}: {e:?}"
            ),
        }
    }
    // The rest have a model too large for every instance: both sides find nothing.
    assert!(
        cases >= 80 && mps_cases >= 10,
        "{cases} cases, {mps_cases} under MPS"
    );
}
