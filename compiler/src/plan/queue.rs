//! The queueing model of a node at an offered load (SPEC 2.4.10): every node is a G/G/c queue
//! whose customers are its batches (a sequence slot's sequences under `continuous`), with the
//! Allen–Cunneen approximation of the mean wait and an exponential tail for its quantiles.
//! Pure arithmetic on the cost model's numbers; it knows nothing of the search.

use mars_plan::BatchPolicy;

use super::model::NodeOption;

/// The standard normal's 0.99 quantile: a batch's time is read as normal, so its standard
/// deviation is (p99 − median) / z₀.₉₉.
pub const Z99: f64 = 2.326_347_874_040_841;

/// The probability that an arrival waits in an M/M/c queue with `servers` servers and offered
/// load `a` = λ/μ (Erlang C); 1 when `a` ≥ `servers` (the queue is not stable).
pub fn erlang_c(servers: u32, a: f64) -> f64 {
    if a <= 0.0 {
        return 0.0;
    }
    let c = f64::from(servers);
    if a >= c {
        return 1.0;
    }
    // Erlang B by its recursion (stable for any c), then C = B / (1 − ρ(1 − B)).
    let mut b = 1.0;
    for k in 1..=servers {
        b = a * b / (f64::from(k) + a * b);
    }
    let rho = a / c;
    b / (1.0 - rho * (1.0 - b))
}

/// One queue: `servers` parallel servers, customers arriving at `arrivals_per_ms`, each served
/// in `service_ms` on average; `ca2` and `cs2` the squared coefficients of variation of the
/// interarrival and service times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Queue {
    pub servers: u32,
    pub arrivals_per_ms: f64,
    pub service_ms: f64,
    pub ca2: f64,
    pub cs2: f64,
}

/// The time a customer waits for a server (ms): mean, median and p99; infinite when the
/// queue is not stable.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Wait {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Wait {
    pub const NONE: Wait = Wait {
        mean_ms: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
    };
    pub const UNSTABLE: Wait = Wait {
        mean_ms: f64::INFINITY,
        p50_ms: f64::INFINITY,
        p99_ms: f64::INFINITY,
    };
}

impl Queue {
    /// ρ = λ·S / c.
    pub fn utilization(&self) -> f64 {
        self.arrivals_per_ms * self.service_ms / f64::from(self.servers.max(1))
    }

    /// Allen–Cunneen: W̄q = C(c, a) / (cμ − λ) · (ca² + cs²) / 2, and the tail
    /// P(Wq > t) = C·exp(−θt) with θ chosen so that the mean matches, θ = 2(cμ − λ)/(ca² + cs²).
    /// For c = 1 with Poisson arrivals this is Pollaczek–Khinchine's mean; for M/M/c it is
    /// exact.
    pub fn wait(&self) -> Wait {
        if self.arrivals_per_ms <= 0.0 || self.service_ms <= 0.0 {
            return Wait::NONE;
        }
        let c = f64::from(self.servers.max(1));
        let mu = 1.0 / self.service_ms;
        let slack = c * mu - self.arrivals_per_ms;
        if slack <= 0.0 || self.utilization() >= 1.0 - 1e-12 {
            return Wait::UNSTABLE;
        }
        let variability = 0.5 * (self.ca2 + self.cs2);
        if variability <= 0.0 {
            // Deterministic arrivals and service below capacity: nobody waits.
            return Wait::NONE;
        }
        let waits = erlang_c(self.servers.max(1), self.arrivals_per_ms * self.service_ms);
        let theta = slack / variability;
        let quantile = |q: f64| {
            if waits <= 1.0 - q {
                0.0
            } else {
                (waits / (1.0 - q)).ln() / theta
            }
        };
        Wait {
            mean_ms: waits / theta,
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
        }
    }
}

/// The queue a node forms at `items_per_s` on `opt` with `replicas` replicas. Under
/// `none`/`dynamic` the customers are batches of b: they arrive at λ/b, each the b-th of b
/// Poisson arrivals (Erlang-b interarrivals, ca² = 1/b), and take S = b·`item_ms` on one of r
/// replicas. Under `continuous` the customers are sequences (ca² = 1) on r·b slots, each
/// holding its sequence for S = b·`item_ms`. In both cases ρ = λ·`item_ms`/(1000·r), the
/// utilization of SPEC 2.4. cs from the option's median and p99: (P − L)/(z₀.₉₉·S).
pub fn node_queue(opt: &NodeOption, replicas: u32, items_per_s: f64) -> Queue {
    node_queue_filled(opt, replicas, items_per_s, f64::from(opt.batch.max(1)))
}

/// [`node_queue`] where a batch of `opt` leaves holding `items_per_batch` items on average (a
/// batch whose wait runs out before it is full); its time stays that of `opt`'s batch.
pub fn node_queue_filled(
    opt: &NodeOption,
    replicas: u32,
    items_per_s: f64,
    items_per_batch: f64,
) -> Queue {
    let b = f64::from(opt.batch.max(1));
    let service_ms = b * opt.item_ms;
    let cs = if service_ms > 0.0 {
        (opt.p99_ms - opt.latency_ms).max(0.0) / (Z99 * service_ms)
    } else {
        0.0
    };
    let replicas = replicas.max(1);
    match opt.policy {
        BatchPolicy::Continuous => Queue {
            servers: replicas.saturating_mul(opt.batch.max(1)),
            arrivals_per_ms: items_per_s / 1000.0,
            service_ms,
            ca2: 1.0,
            cs2: cs * cs,
        },
        BatchPolicy::None | BatchPolicy::Dynamic => {
            let k = items_per_batch.clamp(1.0, b);
            Queue {
                servers: replicas,
                arrivals_per_ms: items_per_s / (1000.0 * k),
                service_ms,
                ca2: 1.0 / k,
                cs2: cs * cs,
            }
        }
    }
}

/// [`node_queue`]'s wait.
pub fn node_wait(opt: &NodeOption, replicas: u32, items_per_s: f64) -> Wait {
    node_queue(opt, replicas, items_per_s).wait()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn erlang_c_matches_hand_computed_values() {
        // M/M/1: C = ρ.
        assert!(close(erlang_c(1, 0.5), 0.5));
        assert!(close(erlang_c(1, 0.9), 0.9));
        // M/M/2 at a = 1: (a²/2!·2/(2−a)) / (1 + a + a²/2!·2/(2−a)) = 1 / 3.
        assert!(close(erlang_c(2, 1.0), 1.0 / 3.0));
        // M/M/3 at a = 2: P0 terms 1, 2, 2, and 8/6·3/(3−2) = 4 → C = 4 / 9.
        assert!(close(erlang_c(3, 2.0), 4.0 / 9.0));
        assert_eq!(erlang_c(4, 0.0), 0.0);
        assert_eq!(erlang_c(2, 2.0), 1.0);
    }

    #[test]
    fn mm1_and_mmc_waits_are_the_textbook_ones() {
        // M/M/1, λ = 0.5/ms, μ = 1/ms: W̄q = ρ/(μ − λ) = 1 ms; P(Wq > t) = ρ·e^{−(μ−λ)t}, so
        // p99 = ln(100·0.5)/0.5 = 7.824 ms; p50: C = 0.5 ≤ 0.5, so 0.
        let q = Queue {
            servers: 1,
            arrivals_per_ms: 0.5,
            service_ms: 1.0,
            ca2: 1.0,
            cs2: 1.0,
        };
        let w = q.wait();
        assert!(close(w.mean_ms, 1.0), "{w:?}");
        assert!(close(w.p99_ms, (50.0f64).ln() / 0.5), "{w:?}");
        assert_eq!(w.p50_ms, 0.0);
        // M/M/2, λ = 1/ms, μ = 1/ms: C = 1/3, W̄q = C/(2μ − λ) = 1/3 ms.
        let q = Queue {
            servers: 2,
            arrivals_per_ms: 1.0,
            ..q
        };
        assert!(close(q.wait().mean_ms, 1.0 / 3.0));
        // M/D/1 (cs² = 0) waits half as long as M/M/1: ρ/(2(μ − λ)).
        let md1 = Queue {
            servers: 1,
            arrivals_per_ms: 0.5,
            service_ms: 1.0,
            ca2: 1.0,
            cs2: 0.0,
        };
        assert!(close(md1.wait().mean_ms, 0.5));
        // D/D/1 below capacity: no wait; at capacity: unstable.
        let dd1 = Queue { ca2: 0.0, ..md1 };
        assert_eq!(dd1.wait(), Wait::NONE);
        let full = Queue {
            arrivals_per_ms: 1.0,
            ..md1
        };
        assert_eq!(full.wait(), Wait::UNSTABLE);
    }

    #[test]
    fn the_p99_wait_rises_monotonically_toward_saturation() {
        let mut last = 0.0;
        for k in 1..100 {
            let q = Queue {
                servers: 3,
                arrivals_per_ms: 3.0 * f64::from(k) / 100.0,
                service_ms: 1.0,
                ca2: 0.25,
                cs2: 0.1,
            };
            let w = q.wait().p99_ms;
            assert!(w >= last, "at ρ = {k}%: {w} < {last}");
            last = w;
        }
        assert!(last > 10.0, "{last}");
    }

    fn option(policy: BatchPolicy, batch: u32, latency: f64, p99: f64) -> NodeOption {
        NodeOption {
            device: mars_plan::Device::Cpu,
            worker: 0,
            gpu: None,
            policy,
            batch,
            latency_ms: latency,
            p99_ms: p99,
            item_ms: latency / f64::from(batch),
            per_step: false,
            memory_mb: 0.0,
            cores: 1.0,
            per_request: latency / f64::from(batch) / 1000.0,
            gpu_load: 0.0,
            sm_share: 1.0,
        }
    }

    #[test]
    fn a_node_queues_batches_and_its_utilization_is_the_cost_models() {
        // b = 8, 4 ms a batch, 1000 items/s on 1 replica: 125 batches/s of 4 ms, ρ = 0.5.
        let q = node_queue(&option(BatchPolicy::Dynamic, 8, 4.0, 4.0), 1, 1000.0);
        assert!(close(q.utilization(), 0.5));
        assert!(close(q.ca2, 0.125));
        assert_eq!(q.cs2, 0.0);
        // C = ρ = 0.5; W̄q = 0.5/(0.25 − 0.125)·0.0625 = 0.25 ms.
        assert!(close(q.wait().mean_ms, 0.25), "{:?}", q.wait());
        // A p99 above the median adds service variability: (6 − 4)/(z·4) squared.
        let q = node_queue(&option(BatchPolicy::Dynamic, 8, 4.0, 6.0), 1, 1000.0);
        assert!(close(q.cs2, (0.5 / Z99).powi(2)));
        // Two replicas halve ρ.
        let q = node_queue(&option(BatchPolicy::None, 1, 4.0, 4.0), 2, 250.0);
        assert!(close(q.utilization(), 0.5));
        assert_eq!(q.ca2, 1.0);
    }
}
