//! The optimized tract plans of every `onnx` node in the process, shared: building one costs
//! 0.15–2.5 s (more on a loaded machine), so replicas of a node, nodes on the same file and
//! later runs in the same process (a server's warm-up and requests, a benchmark's runs) reuse
//! what one of them built. Keyed by the graph ([`GraphKey`]) and the concrete input shapes; at
//! most [`PLAN_CACHE`] plans are kept, the least recently used going first.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use tract_onnx::prelude::{TractResult, TypedRunnableModel};

/// At most this many optimized plans are kept in the process.
pub const PLAN_CACHE: usize = 48;

/// What identifies a graph for the cache: its file (canonical path, length and modification
/// time, so an edited file is a new graph), or a graph built in memory (unique per build).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GraphKey(String);

impl GraphKey {
    pub fn of_file(path: &Path) -> GraphKey {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let (len, modified) = std::fs::metadata(path).map_or((0, 0), |m| {
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            (m.len(), t)
        });
        GraphKey(format!("file:{}:{len}:{modified}", canonical.display()))
    }

    pub fn unique() -> GraphKey {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        GraphKey(format!("memory:{}", NEXT.fetch_add(1, Ordering::Relaxed)))
    }
}

type Shapes = Vec<Vec<usize>>;

struct Cache {
    plans: BTreeMap<(GraphKey, Shapes), (u64, Arc<TypedRunnableModel>)>,
    clock: u64,
}

/// Plans built since the process started (every [`get_or_build`] that had to build).
static BUILT: AtomicU64 = AtomicU64::new(0);

/// How many plans this process has built so far: benchmarks report the difference over a run.
pub fn plans_built() -> u64 {
    BUILT.load(Ordering::Relaxed)
}

static PLANS: LazyLock<Mutex<Cache>> = LazyLock::new(|| {
    Mutex::new(Cache {
        plans: BTreeMap::new(),
        clock: 0,
    })
});

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    PLANS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The plan of `graph` for `shapes`, built by `build` when no one has built it yet; `true`
/// with it when this call built it. The lock is not held while building (two replicas
/// asking for a new shape at once may both build it; the second's plan is the one kept).
pub fn get_or_build(
    graph: &GraphKey,
    shapes: &Shapes,
    build: impl FnOnce() -> TractResult<Arc<TypedRunnableModel>>,
) -> TractResult<(Arc<TypedRunnableModel>, bool)> {
    let key = (graph.clone(), shapes.clone());
    {
        let mut c = cache();
        c.clock += 1;
        let now = c.clock;
        if let Some((used, plan)) = c.plans.get_mut(&key) {
            *used = now;
            return Ok((Arc::clone(plan), false));
        }
    }
    let plan = build()?;
    BUILT.fetch_add(1, Ordering::Relaxed);
    let mut c = cache();
    c.clock += 1;
    let now = c.clock;
    if c.plans.len() >= PLAN_CACHE && !c.plans.contains_key(&key) {
        if let Some(oldest) = c
            .plans
            .iter()
            .min_by_key(|(_, (used, _))| *used)
            .map(|(k, _)| k.clone())
        {
            c.plans.remove(&oldest);
        }
    }
    c.plans.insert(key, (now, Arc::clone(&plan)));
    Ok((plan, true))
}

/// The batch sizes a batch of `n` items runs as: the binary decomposition of `n`, largest
/// first (13 → 8, 4, 1). A batched graph then needs plans for powers of two only — at most
/// log₂(max) + 1 per input shape, where sizes 1…max would need max — and no row is padding.
pub fn batch_parts(n: usize) -> Vec<usize> {
    (0..usize::BITS)
        .rev()
        .map(|b| 1usize << b)
        .filter(|p| n & p != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_parts_are_powers_of_two_that_sum_to_n() {
        assert_eq!(batch_parts(13), vec![8, 4, 1]);
        assert_eq!(batch_parts(16), vec![16]);
        assert_eq!(batch_parts(1), vec![1]);
        assert!(batch_parts(0).is_empty());
        for n in 1..200 {
            let p = batch_parts(n);
            assert_eq!(p.iter().sum::<usize>(), n);
            assert!(p.iter().all(|x| x.is_power_of_two()));
            assert!(p.windows(2).all(|w| w[0] > w[1]));
        }
    }

    #[test]
    fn a_file_key_changes_when_the_file_does() {
        let dir = std::env::temp_dir().join(format!("mars-plan-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("g.onnx");
        std::fs::write(&f, b"one").expect("write");
        let a = GraphKey::of_file(&f);
        assert_eq!(a, GraphKey::of_file(&f));
        std::fs::write(&f, b"three").expect("write");
        assert_ne!(a, GraphKey::of_file(&f));
        assert_ne!(GraphKey::unique(), GraphKey::unique());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
