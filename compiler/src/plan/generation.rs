//! The cost of a generating node (a model with `generate = true`) under each batch policy, from
//! its per-step costs and its output length distribution (SPEC.md 2.4.7). Pure arithmetic on
//! the profile's numbers: the cost model turns the results into options.
//!
//! The model: a sequence takes part in L decode steps (L drawn from the profile's
//! `output_tokens`); a step advancing n sequences together costs s(n) (`step_ms`, interpolated
//! linearly between the measured batch sizes); prefilling g prompts together costs f(g)
//! (`prefill_ms`, likewise). Finished sequences leave a step: they cost nothing further.

use mars_plan::{DeviceProfile, TokenHistogram};

/// The output length distribution: `tokens[i]` with probability `prob[i]`, tokens increasing.
#[derive(Debug, Clone, PartialEq)]
pub struct Lengths {
    tokens: Vec<f64>,
    prob: Vec<f64>,
}

impl Lengths {
    /// From the profile's histogram, shares normalized to sum 1. `None` for an empty one.
    pub fn from_histogram(h: &TokenHistogram) -> Option<Lengths> {
        let total: f64 = h.share.iter().sum();
        if h.tokens.is_empty() || total.is_nan() || total <= 0.0 {
            return None;
        }
        Some(Lengths {
            tokens: h.tokens.iter().map(|&t| f64::from(t)).collect(),
            prob: h.share.iter().map(|s| s / total).collect(),
        })
    }

    /// E[L].
    pub fn mean(&self) -> f64 {
        self.tokens.iter().zip(&self.prob).map(|(t, p)| t * p).sum()
    }

    /// P(L ≤ tokens[i]) for each i (the last is 1 exactly).
    fn cdf(&self) -> Vec<f64> {
        let mut acc = 0.0;
        let n = self.prob.len();
        self.prob
            .iter()
            .enumerate()
            .map(|(i, p)| {
                acc += p;
                if i + 1 == n {
                    1.0
                } else {
                    acc.min(1.0)
                }
            })
            .collect()
    }

    /// The q-quantile of the longest of `b` independent sequences: the smallest length t with
    /// P(L ≤ t)^b ≥ q. With b = 1, the q-quantile of L.
    pub fn quantile_of_max(&self, b: u32, q: f64) -> f64 {
        let b = i32::try_from(b.max(1)).unwrap_or(i32::MAX);
        for (t, c) in self.tokens.iter().zip(self.cdf()) {
            if c.powi(b) >= q - 1e-12 {
                return *t;
            }
        }
        *self
            .tokens
            .last()
            .expect("a distribution has at least one length")
    }

    /// E[max of b draws of L] = Σ_t t·(F(t)^b − F(t⁻)^b): the steps a static batch of b runs.
    pub fn expected_max(&self, b: u32) -> f64 {
        let b = i32::try_from(b.max(1)).unwrap_or(i32::MAX);
        let mut prev = 0.0f64;
        let mut e = 0.0;
        for (t, c) in self.tokens.iter().zip(self.cdf()) {
            let now = c.powi(b);
            e += t * (now - prev.powi(b));
            prev = c;
        }
        e
    }

    /// The steps of a batch grouped by how likely a sequence is to still run in them: for each
    /// length t_j (in order), the number of steps t_j − t_{j−1} and P(L ≥ t_j).
    fn step_groups(&self) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(self.tokens.len());
        let mut prev_t = 0.0;
        let mut below = 0.0f64; // P(L < t_j)
        for (t, p) in self.tokens.iter().zip(&self.prob) {
            out.push((t - prev_t, (1.0 - below).clamp(0.0, 1.0)));
            prev_t = *t;
            below += p;
        }
        out
    }
}

/// A device's per-step costs.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCosts {
    batch: Vec<f64>,
    step_ms: Vec<f64>,
    prefill_ms: Vec<f64>,
}

impl StepCosts {
    /// From a device's profile; `None` without `step_ms`.
    pub fn from_profile(dp: &DeviceProfile) -> Option<StepCosts> {
        let step_ms = dp.step_ms.clone()?;
        if step_ms.len() != dp.batch.len() || dp.batch.is_empty() {
            return None;
        }
        let prefill_ms = dp
            .prefill_ms
            .clone()
            .filter(|p| p.len() == dp.batch.len())
            .unwrap_or_else(|| vec![0.0; dp.batch.len()]);
        Some(StepCosts {
            batch: dp.batch.iter().map(|&b| f64::from(b)).collect(),
            step_ms,
            prefill_ms,
        })
    }

    /// s(n): one decode step of n sequences (0 for none).
    pub fn step(&self, n: f64) -> f64 {
        interpolate(&self.batch, &self.step_ms, n)
    }

    /// f(g): prefilling g prompts together (0 for none).
    pub fn prefill(&self, g: f64) -> f64 {
        interpolate(&self.batch, &self.prefill_ms, g)
    }

    /// E[s(N)] for N ~ Binomial(b, q): a step of a batch of b where each sequence still runs
    /// with probability q.
    fn expected_step(&self, b: u32, q: f64) -> f64 {
        if q >= 1.0 {
            return self.step(f64::from(b));
        }
        if q <= 0.0 {
            return 0.0;
        }
        // pmf by the recurrence P(n+1) = P(n)·(b−n)/(n+1)·q/(1−q), from P(0) = (1−q)^b, in logs
        // so large b does not underflow.
        let (lq, l1q) = (q.ln(), (1.0 - q).ln());
        let mut log_c = 0.0; // ln C(b, n)
        let mut e = 0.0;
        for n in 0..=b {
            if n > 0 {
                log_c += (f64::from(b - n + 1) / f64::from(n)).ln();
                let p = (log_c + f64::from(n) * lq + f64::from(b - n) * l1q).exp();
                e += p * self.step(f64::from(n));
            }
        }
        e
    }
}

/// Piecewise-linear through (0, 0) and the measured points; beyond the last point, the last
/// segment extended.
fn interpolate(xs: &[f64], ys: &[f64], x: f64) -> f64 {
    if x <= 0.0 || xs.is_empty() {
        return 0.0;
    }
    let mut px = 0.0;
    let mut py = 0.0;
    for (&cx, &cy) in xs.iter().zip(ys) {
        if x <= cx {
            return py + (cy - py) * (x - px) / (cx - px);
        }
        px = cx;
        py = cy;
    }
    // Extrapolate from the last two points (or through the origin when there is one).
    let n = xs.len();
    let (x0, y0) = if n >= 2 {
        (xs[n - 2], ys[n - 2])
    } else {
        (0.0, 0.0)
    };
    (py + (py - y0) * (x - px) / (px - x0)).max(0.0)
}

/// What one policy at one batch size costs: the replica time each item takes on average (so a
/// replica serves 1000/`item_ms` items/s) and a request's time in the node, median and p99.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyCost {
    pub item_ms: f64,
    pub latency_ms: f64,
    pub p99_ms: f64,
}

/// `none`, or `dynamic` with batches of b (b = 1 is `none`): a batch is prefilled together and
/// stepped until its longest member finishes; finished members leave the step. Its time is
/// B(b) = f(b) + Σ_k E[s(N_k)], N_k ~ Binomial(b, P(L ≥ k)) the members still running at step
/// k; a replica serves b/B(b) items per ms. Every member leaves with the batch: its latency is
/// the batch's, f(b) + M·s̄ with M the median (p99) of the longest of b lengths and
/// s̄ = (B(b) − f(b))/E[max of b] the mean cost of the batch's steps.
pub fn batched(costs: &StepCosts, lengths: &Lengths, b: u32) -> PolicyCost {
    let b = b.max(1);
    let prefill = costs.prefill(f64::from(b));
    let steps: f64 = lengths
        .step_groups()
        .iter()
        .map(|&(count, q)| count * costs.expected_step(b, q))
        .sum();
    let longest = lengths.expected_max(b);
    let mean_step = if longest > 0.0 { steps / longest } else { 0.0 };
    PolicyCost {
        item_ms: (prefill + steps) / f64::from(b),
        latency_ms: prefill + lengths.quantile_of_max(b, 0.5) * mean_step,
        p99_ms: prefill + lengths.quantile_of_max(b, 0.99) * mean_step,
    }
}

/// `continuous` with at most b sequences: in steady state b sequences run every step and
/// b/E[L] of them finish per step on average, their places taken by as many new ones,
/// prefilled together in groups of g = clamp(b/E[L], 1, b). A sequence takes E[L]·s(b)/b of
/// the replica in steps plus f(g)/g in prefill; the replica serves 1000/that items/s. A step
/// cycle (a step, plus the prefills between steps) takes τ = s(b) + (b/E[L])·f(g)/g; a
/// request's latency is f(g) + L·τ, at the median (p99) of L.
pub fn continuous(costs: &StepCosts, lengths: &Lengths, b: u32) -> PolicyCost {
    let bf = f64::from(b.max(1));
    let mean = lengths.mean().max(f64::MIN_POSITIVE);
    let g = (bf / mean).clamp(1.0, bf);
    let prefill_each = costs.prefill(g) / g;
    let step = costs.step(bf);
    let item_ms = mean * step / bf + prefill_each;
    let cycle = step + (bf / mean) * prefill_each;
    PolicyCost {
        item_ms,
        latency_ms: costs.prefill(g) + lengths.quantile_of_max(1, 0.5) * cycle,
        p99_ms: costs.prefill(g) + lengths.quantile_of_max(1, 0.99) * cycle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(tokens: &[u32], share: &[f64]) -> Lengths {
        Lengths::from_histogram(&TokenHistogram {
            tokens: tokens.to_vec(),
            share: share.to_vec(),
        })
        .expect("non-empty")
    }

    fn costs(batch: &[u32], step: &[f64], prefill: &[f64]) -> StepCosts {
        let mut dp = DeviceProfile::new(batch.to_vec(), vec![1.0; batch.len()]);
        dp.step_ms = Some(step.to_vec());
        dp.prefill_ms = Some(prefill.to_vec());
        StepCosts::from_profile(&dp).expect("step costs")
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn expected_max_of_a_two_point_mix() {
        // 80% one token, 20% eleven: the longest of 16 is 1 only if all 16 are (0.8^16).
        let l = lengths(&[1, 11], &[0.8, 0.2]);
        assert!(close(l.mean(), 3.0));
        let all_short = 0.8f64.powi(16);
        assert!(close(
            l.expected_max(16),
            1.0 * all_short + 11.0 * (1.0 - all_short)
        ));
        assert!(
            close(l.expected_max(16), 10.718_525_023_289_344),
            "{}",
            l.expected_max(16)
        );
        assert!(close(l.expected_max(1), 3.0));
        assert_eq!(l.quantile_of_max(1, 0.5), 1.0);
        assert_eq!(l.quantile_of_max(1, 0.99), 11.0);
        assert_eq!(l.quantile_of_max(16, 0.5), 11.0);
        // Shares are weights: doubling them changes nothing.
        assert_eq!(lengths(&[1, 11], &[1.6, 0.4]), l);
    }

    #[test]
    fn steps_interpolate_through_the_origin() {
        let c = costs(&[1, 8], &[1.0, 4.5], &[2.0, 9.0]);
        assert!(close(c.step(1.0), 1.0));
        assert!(close(c.step(4.5), 2.75));
        assert!(close(c.step(0.5), 0.5));
        assert_eq!(c.step(0.0), 0.0);
        assert!(close(c.step(15.0), 8.0)); // the last segment extended
        assert!(close(c.prefill(8.0), 9.0));
        // E[s(N)], N ~ Bin(2, 0.5): 0.5·s(1) + 0.25·s(2) = 0.5 + 0.25·1.5.
        assert!(close(c.expected_step(2, 0.5), 0.875));
        assert!(close(c.expected_step(8, 1.0), 4.5));
    }

    /// Steps cost the same however many sequences run (s(n) = 1 ms, no prefill): a static batch
    /// of 16 runs E[max] steps for 16 items, continuous 16 sequences run E[L] steps each.
    /// Continuous serves E[max]/E[L] times as many items: the padding ratio.
    #[test]
    fn continuous_beats_static_by_the_padding_ratio_when_steps_are_flat() {
        let l = lengths(&[1, 11], &[0.8, 0.2]);
        let c = costs(&[1, 16], &[1.0, 1.0], &[0.0, 0.0]);
        let none = batched(&c, &l, 1);
        assert!(close(none.item_ms, 3.0));
        assert!(
            close(none.latency_ms, 1.0) && close(none.p99_ms, 11.0),
            "{none:?}"
        );
        let dynamic = batched(&c, &l, 16);
        // Flat steps: every step of the batch costs 1 ms while anyone runs.
        assert!(
            close(dynamic.item_ms, l.expected_max(16) / 16.0),
            "{dynamic:?}"
        );
        assert!(close(dynamic.latency_ms, 11.0) && close(dynamic.p99_ms, 11.0));
        let cont = continuous(&c, &l, 16);
        assert!(close(cont.item_ms, 3.0 / 16.0));
        assert!(close(
            dynamic.item_ms / cont.item_ms,
            10.718_525_023_289_344 / 3.0
        ));
        // A short sequence leaves after its one step instead of waiting for the long ones.
        assert!(
            close(cont.latency_ms, 1.0) && close(cont.p99_ms, 11.0),
            "{cont:?}"
        );
    }

    /// Steps cost in proportion to the sequences in them (s(n) = n ms): a finished sequence
    /// costs nothing, so static batching wastes nothing and all policies serve alike.
    #[test]
    fn proportional_steps_make_the_policies_equal() {
        let l = lengths(&[1, 11], &[0.8, 0.2]);
        let c = costs(&[1, 16], &[1.0, 16.0], &[0.0, 0.0]);
        for p in [
            batched(&c, &l, 1),
            batched(&c, &l, 16),
            continuous(&c, &l, 16),
        ] {
            assert!(close(p.item_ms, 3.0), "{p:?}");
        }
    }

    /// s(n) = 0.5 + 0.25·n, prefill f(g) = 1 + g: hand-computed.
    #[test]
    fn affine_steps_and_prefill_by_hand() {
        let l = lengths(&[2, 6], &[0.5, 0.5]);
        let c = costs(&[1, 2, 4], &[0.75, 1.0, 1.5], &[2.0, 3.0, 5.0]);
        // Continuous at 4: E[L] = 4, g = 1, f(1) = 2: item = 4·1.5/4 + 2 = 3.5 ms;
        // cycle = 1.5 + 1·2 = 3.5; latency = 2 + 2·3.5 (median L = 2), p99 = 2 + 6·3.5.
        let cont = continuous(&c, &l, 4);
        assert!(close(cont.item_ms, 3.5));
        assert!(close(cont.latency_ms, 9.0));
        assert!(close(cont.p99_ms, 23.0));
        // Dynamic at 2: steps 1–2 run both (s(2) = 1); steps 3–6 run N ~ Bin(2, 0.5):
        // E[s(N)] = 0.5·0.75 + 0.25·1.0 = 0.625; B = f(2) + 2·1 + 4·0.625 = 3 + 4.5 = 7.5.
        let dynamic = batched(&c, &l, 2);
        assert!(close(dynamic.item_ms, 3.75), "{dynamic:?}");
        // E[max of 2] = 2·0.25 + 6·0.75 = 5; s̄ = 4.5/5; the median max is 6.
        assert!(close(dynamic.latency_ms, 3.0 + 6.0 * 0.9));
        // None: f(1) + E[L]·s(1) = 2 + 3 = 5.
        assert!(close(batched(&c, &l, 1).item_ms, 5.0));
    }
}
