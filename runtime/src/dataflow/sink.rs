//! The sink: joins the producers of the pipeline's outputs by request id on worker 0 and hands
//! each finished request to the writer thread, with its latency since admission.

use std::rc::Rc;
use std::time::Duration;

use crossbeam_channel::Sender;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;

use super::source::Flow;
use super::{arg_value, first_failure, Failure, Joiner, OutputSpec, Rec};
use crate::value::Value;

/// A request's end: its output values (in the pipeline's output order) or its failure.
#[derive(Debug)]
pub struct Outcome {
    pub id: u64,
    pub result: Result<Vec<Value>, Failure>,
    /// Time since admission; `None` for requests that never entered the dataflow.
    pub latency: Option<Duration>,
}

/// The sink operator.
pub fn output_sink(
    stream: Stream<'_, u64, Vec<Rec>>,
    deps: Vec<u32>,
    outputs: Vec<OutputSpec>,
    flow: Rc<Flow>,
    out: Sender<Outcome>,
) {
    let mut joiner = Joiner::new(deps);
    let pact = Exchange::new(|_: &Rec| 0u64);
    stream.sink(pact, "outputs", move |(input, _frontier)| {
        input.for_each(|cap, data| {
            let Some(&round) = cap.least() else { return };
            for rec in data.drain(..) {
                let Some((id, bodies)) = joiner.offer(rec) else {
                    continue;
                };
                let result = match first_failure(&bodies) {
                    Some(f) => Err(f.clone()),
                    None => Ok(outputs.iter().map(|o| arg_value(&o.arg, &bodies)).collect()),
                };
                let latency = flow.finished(round).map(|t| t.elapsed());
                // The writer outlives the dataflow unless the run is being torn down.
                let _ = out.send(Outcome {
                    id,
                    result,
                    latency,
                });
            }
        });
    });
}
