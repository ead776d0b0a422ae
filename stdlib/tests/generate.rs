//! The tiny translator's step-level interface (`Node::generator`): sequences admitted, prefilled,
//! stepped, preempted and recomputed in an interleaving like the continuous-batching
//! scheduler's give the same outputs as `run_batch` one item at a time, greedy and sampled.

mod common;

use std::collections::VecDeque;

use mars_runtime::{Node, Outputs, SeqId, Step, Value};
use mars_stdlib::models::numbers;

fn node(config: serde_json::Value) -> Box<dyn Node> {
    match mars_stdlib::registry().instantiate(&common::lm_context(config)) {
        Ok(n) => n,
        Err(e) => panic!("the translator node builds: {e}"),
    }
}

fn text(r: Result<Outputs, mars_runtime::NodeError>) -> Result<String, String> {
    match r {
        Ok(mut v) => match v.pop() {
            Some(Value::Text(t)) => Ok(t),
            other => Err(format!("not text: {other:?}")),
        },
        Err(e) => Err(e.message),
    }
}

/// Mixed lengths: one-word outputs and long ones, plus a prompt too long for the model.
fn inputs() -> Vec<String> {
    let mut v: Vec<String> = [
        7u32, 797_797, 21, 80, 999_999, 3, 71_071, 1_001, 15, 345_678, 2, 90,
    ]
    .iter()
    .map(|&x| numbers::english(x))
    .collect();
    v.insert(5, vec!["one"; 40].join(" "));
    v
}

fn one_at_a_time(n: &mut Box<dyn Node>, texts: &[String]) -> Vec<Result<String, String>> {
    texts
        .iter()
        .map(|t| text(n.run_batch(vec![vec![Value::Text(t.clone())]]).remove(0)))
        .collect()
}

/// Drive the interface like a scheduler would: two sequences join before every step, one
/// preemption of the youngest running sequence every third step (recomputed when it joins
/// again), every running sequence stepped each time; `fused`: through `prefill_and_step`
/// (one pass per iteration), else `prefill` then `step`. Returns outputs by input index and
/// the number of preemptions.
fn interleaved(
    n: &mut Box<dyn Node>,
    texts: &[String],
    fused: bool,
) -> (Vec<Result<String, String>>, usize) {
    let g = n.generator().expect("transformer_lm generates");
    let mut results: Vec<Option<Result<String, String>>> = vec![None; texts.len()];
    let mut waiting: VecDeque<usize> = (0..texts.len()).collect();
    let mut running: Vec<SeqId> = Vec::new();
    let mut preempted: Vec<SeqId> = Vec::new();
    let mut preemptions = 0;
    let mut iteration = 0;
    let record = |results: &mut Vec<Option<Result<String, String>>>,
                  running: &mut Vec<SeqId>,
                  outcomes: Vec<(SeqId, Step)>| {
        for (id, step) in outcomes {
            match step {
                Step::Running { cached } => {
                    assert!(cached >= 3, "a prompt is at least <bos> word <sep>");
                    running.push(id);
                }
                Step::Done(r) => results[id as usize] = Some(text(r)),
            }
        }
    };
    while results.iter().any(Option::is_none) {
        iteration += 1;
        let mut fresh: Vec<SeqId> = std::mem::take(&mut preempted);
        for _ in 0..2 {
            let Some(i) = waiting.pop_front() else { break };
            let item = vec![Value::Text(texts[i].clone())];
            match g.admit(i as SeqId, item) {
                Ok(prompt) => {
                    assert!(prompt >= 3);
                    fresh.push(i as SeqId);
                }
                Err(e) => results[i] = Some(Err(e.message)),
            }
        }
        let ids = std::mem::take(&mut running);
        let (filled, stepped) = if fused {
            // One pass: the joining sequences are prefilled beside the running ones' step.
            g.prefill_and_step(&fresh, &ids)
        } else {
            let filled = g.prefill(&fresh);
            let mut ids = ids.clone();
            ids.extend(
                filled
                    .iter()
                    .filter(|o| matches!(o.1, Step::Running { .. }))
                    .map(|o| o.0),
            );
            let stepped = g.step(&ids);
            assert_eq!(stepped.iter().map(|o| o.0).collect::<Vec<_>>(), ids);
            (filled, stepped)
        };
        assert_eq!(
            filled.iter().map(|o| o.0).collect::<Vec<_>>(),
            fresh,
            "one outcome per prefilled id, in order"
        );
        if fused {
            assert_eq!(stepped.iter().map(|o| o.0).collect::<Vec<_>>(), ids);
            record(&mut results, &mut running, filled);
            record(&mut results, &mut running, stepped);
        } else {
            // The prefilled ones were stepped too: only the step's outcomes count.
            record(&mut results, &mut running, stepped);
        }
        if iteration % 3 == 0 {
            if let Some(youngest) = running.iter().copied().max() {
                running.retain(|&id| id != youngest);
                let freed = g.preempt(youngest);
                assert!(freed >= 3, "a running sequence has its prompt cached");
                preempted.push(youngest);
                preemptions += 1;
            }
        }
        assert!(iteration < 500, "the interleaving finishes");
    }
    let results = results.into_iter().map(|r| r.expect("all done")).collect();
    (results, preemptions)
}

#[test]
fn the_step_interface_matches_run_batch_one_at_a_time_greedy() {
    let mut n = node(serde_json::json!({"weights": "weights/mt.safetensors", "max_tokens": 24}));
    let texts = inputs();
    let expected = one_at_a_time(&mut n, &texts);
    for fused in [false, true] {
        let (got, preemptions) = interleaved(&mut n, &texts, fused);
        assert!(preemptions >= 2, "{preemptions} preemptions");
        // Recomputing a preempted sequence runs a full forward pass instead of cached steps,
        // and the batched matmuls differ; a differing argmax would need a float tie, and none
        // occurs.
        assert_eq!(got, expected, "fused: {fused}");
    }
    let (got, _) = interleaved(&mut n, &texts, true);
    assert_eq!(got[1].as_deref(), Ok(numbers::french(797_797).as_str()));
    assert!(got[5].as_ref().is_err_and(|e| e.contains("prompt is")));
}

#[test]
fn the_step_interface_matches_run_batch_one_at_a_time_sampled() {
    let config = serde_json::json!({"weights": "weights/mt.safetensors", "max_tokens": 12,
                                    "temperature": 1.5, "top_k": 8, "seed": 7});
    let mut n = node(config);
    let texts = inputs();
    let expected = one_at_a_time(&mut n, &texts);
    for fused in [false, true] {
        let (got, preemptions) = interleaved(&mut n, &texts, fused);
        assert!(preemptions >= 2);
        // Each item samples from its own generator, which survives preemption.
        assert_eq!(got, expected, "fused: {fused}");
    }
}

#[test]
fn max_tokens_one_ends_at_the_first_step_and_errors_name_the_sequence() {
    let mut n = node(serde_json::json!({"weights": "weights/mt.safetensors", "max_tokens": 1}));
    let g = n.generator().expect("generates");
    assert_eq!(g.max_sequence_tokens(), 31);
    assert_eq!(g.kv_capacity(), None);
    g.admit(1, vec![Value::Text("twenty four".into())])
        .expect("admitted");
    let filled = g.prefill(&[1]);
    assert!(matches!(filled[0].1, Step::Running { cached: 4 }));
    let stepped = g.step(&[1, 9]);
    assert!(matches!(&stepped[0].1, Step::Done(Ok(v)) if v == &vec![Value::Text("vingt".into())]));
    assert!(matches!(&stepped[1].1, Step::Done(Err(e)) if e.message.contains("no sequence 9")));
    assert_eq!(g.preempt(1), 0, "a finished sequence is forgotten");

    let mut bounded =
        node(serde_json::json!({"weights": "weights/mt.safetensors", "kv_tokens": 40}));
    assert_eq!(
        bounded.generator().expect("generates").kv_capacity(),
        Some(40)
    );
}

#[test]
fn the_padded_static_baseline_gives_the_same_outputs() {
    let config = serde_json::json!({"weights": "weights/mt.safetensors", "max_tokens": 24});
    let mut plain = node(config.clone());
    let ctx = common::lm_context(config);
    let mut padded = match mars_stdlib::models::padded_lm_factory()(&ctx) {
        Ok(n) => n,
        Err(e) => panic!("the padded node builds: {e}"),
    };
    assert!(padded.generator().is_none(), "static batching only");
    let texts = inputs();
    let batch = |t: &[String]| t.iter().map(|t| vec![Value::Text(t.clone())]).collect();
    let a: Vec<_> = plain
        .run_batch(batch(&texts))
        .into_iter()
        .map(text)
        .collect();
    let b: Vec<_> = padded
        .run_batch(batch(&texts))
        .into_iter()
        .map(text)
        .collect();
    assert_eq!(a, b);
    assert_eq!(a[0].as_deref(), Ok("sept"));
}
