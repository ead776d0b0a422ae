//! The input side of a run: JSONL read line by line (never whole), each line decoded into the
//! pipeline's inputs. A line that is not a JSON object, or lacks or mistypes a field without a
//! default, becomes that request's error record (node `input`) and never enters the dataflow.

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Sender;
use timely::scheduling::SyncActivator;

use crate::codec::{self, EdgeContext};
use crate::dataflow::sink::Outcome;
use crate::dataflow::source::Request;
use crate::dataflow::{Failure, InputSpec};
use crate::value::Value;

/// Decode one input line into the pipeline's input values, in declaration order.
pub fn parse_request(
    line: &[u8],
    inputs: &[InputSpec],
    cx: &EdgeContext,
) -> Result<Vec<Value>, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("the line is not UTF-8 ({e})"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty line; expected a JSON object".into());
    }
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let obj = json
        .as_object()
        .ok_or_else(|| "expected a JSON object keyed by the pipeline's inputs".to_string())?;
    inputs
        .iter()
        .map(|i| match (obj.get(&i.name), &i.default) {
            (Some(j), _) => {
                codec::decode(j, &i.ty, cx).map_err(|e| format!("field `{}`: {e}", i.name))
            }
            (None, Some(d)) => Ok(d.clone()),
            (None, None) => Err(format!("missing field `{}` ({})", i.name, i.ty)),
        })
        .collect()
}

/// Everything the reader thread needs besides its input.
pub struct ReaderLink<'a> {
    pub inputs: &'a [InputSpec],
    pub cx: &'a EdgeContext,
    pub requests: Sender<Request>,
    pub outcomes: Sender<Outcome>,
    pub wake: &'a AtomicBool,
    pub source: &'a SyncActivator,
    pub stop: &'a AtomicBool,
    /// Ids not to run (they already have records).
    pub skip: &'a HashSet<u64>,
}

/// The longest request line: 256 MiB. A longer line is read through (not kept) and becomes
/// its request's error record.
pub const MAX_LINE_BYTES: usize = 256 << 20;

/// The most bytes of request lines waiting in the queue to the source, besides the one being
/// admitted: the queue is bounded by count and by bytes, so that few large requests cannot
/// hold much memory while the dataflow is busy (SPEC 7.3).
pub const MAX_QUEUED_BYTES: usize = 32 << 20;

/// One line into `line` (newline included), at most `limit` bytes of it kept. Returns the
/// line's full length (0 at the end of the input).
fn read_line_bounded(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let (done, used) = {
            let buf = match input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok(total);
            }
            let (done, used) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, buf.len()),
            };
            let room = limit.saturating_sub(line.len());
            line.extend_from_slice(&buf[..used.min(room)]);
            (done, used)
        };
        input.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

/// The sizes of the requests sent to the source and not yet taken by it, oldest first.
#[derive(Default)]
struct Queued {
    sizes: std::collections::VecDeque<usize>,
    bytes: usize,
}

impl Queued {
    /// Forget the requests the source took (the channel holds only the newest `in_channel`).
    fn settle(&mut self, in_channel: usize) {
        while self.sizes.len() > in_channel {
            if let Some(n) = self.sizes.pop_front() {
                self.bytes -= n;
            }
        }
    }
}

/// Read requests until the input ends or the run stops; returns the number of lines read and
/// how many of them were skipped.
pub fn read_requests(mut input: impl BufRead, link: ReaderLink<'_>) -> std::io::Result<(u64, u64)> {
    let mut line = Vec::with_capacity(256);
    let mut id = 0u64;
    let mut skipped = 0u64;
    let mut failed = None;
    let mut queued = Queued::default();
    loop {
        line.clear();
        let length = match read_line_bounded(&mut input, &mut line, MAX_LINE_BYTES) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        if link.stop.load(Ordering::Relaxed) {
            break;
        }
        id += 1;
        if link.skip.contains(&id) {
            skipped += 1;
            continue;
        }
        if length > MAX_LINE_BYTES {
            let _ = link.outcomes.send(Outcome {
                id,
                result: Err(Failure::new(
                    "input",
                    format!("the line is {length} bytes; a request is at most {MAX_LINE_BYTES} (SPEC 7.3)"),
                )),
                latency: None,
            });
            continue;
        }
        // Wait while the queue holds many bytes (but always let one request through).
        queued.settle(link.requests.len());
        while queued.bytes > 0 && queued.bytes + length > MAX_QUEUED_BYTES {
            if link.stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            queued.settle(link.requests.len());
        }
        match parse_request(&line, link.inputs, link.cx) {
            Ok(values) => {
                // A request counts what it holds once decoded (a small PNG can decode to many
                // megabytes of pixels), and at least its line.
                let size = length.max(values.iter().map(Value::approx_bytes).sum::<usize>());
                queued.sizes.push_back(size);
                queued.bytes += size;
                if link.requests.send(Request { id, values }).is_err() {
                    // The source is gone: the run stopped.
                    break;
                }
                if !link.wake.swap(true, Ordering::SeqCst) {
                    let _ = link.source.activate();
                }
            }
            Err(message) => {
                let _ = link.outcomes.send(Outcome {
                    id,
                    result: Err(Failure::new("input", message)),
                    latency: None,
                });
            }
        }
    }
    // The source learns that the input ended by finding the queue closed: close it, then wake
    // the source, which may be asleep with nothing left to admit.
    drop(link.requests);
    let _ = link.source.activate();
    match failed {
        Some(e) => Err(e),
        None => Ok((id, skipped)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<InputSpec> {
        vec![
            InputSpec {
                name: "text".into(),
                ty: mars_plan::DataType::Text,
                default: None,
            },
            InputSpec {
                name: "n".into(),
                ty: mars_plan::DataType::Int,
                default: Some(Value::Int(7)),
            },
        ]
    }

    #[test]
    fn fields_decode_in_declaration_order_with_defaults() {
        let cx = EdgeContext::plain();
        let v = parse_request(br#"{"n": 2, "text": "a", "extra": 1}"#, &inputs(), &cx);
        assert_eq!(v, Ok(vec![Value::Text("a".into()), Value::Int(2)]));
        let v = parse_request(b"{\"text\": \"a\"}\r\n", &inputs(), &cx);
        assert_eq!(v, Ok(vec![Value::Text("a".into()), Value::Int(7)]));
    }

    #[test]
    fn long_lines_are_cut_but_read_through() {
        let mut input = std::io::Cursor::new(b"abcdef\nxy\nlast".to_vec());
        let mut line = Vec::new();
        assert_eq!(
            read_line_bounded(&mut input, &mut line, 3).expect("read"),
            7
        );
        assert_eq!(line, b"abc");
        line.clear();
        assert_eq!(
            read_line_bounded(&mut input, &mut line, 3).expect("read"),
            3
        );
        assert_eq!(line, b"xy\n");
        line.clear();
        assert_eq!(
            read_line_bounded(&mut input, &mut line, 3).expect("read"),
            4
        );
        line.clear();
        assert_eq!(
            read_line_bounded(&mut input, &mut line, 3).expect("read"),
            0
        );
    }

    #[test]
    fn the_queue_forgets_what_the_source_took() {
        let mut q = Queued::default();
        for n in [5, 7, 11] {
            q.sizes.push_back(n);
            q.bytes += n;
        }
        q.settle(2);
        assert_eq!(q.bytes, 18);
        q.settle(0);
        assert_eq!((q.bytes, q.sizes.len()), (0, 0));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cx = EdgeContext::plain();
        let err = |l: &[u8]| parse_request(l, &inputs(), &cx).expect_err("fails");
        assert!(err(b"{\"text\": ").starts_with("malformed JSON"));
        assert_eq!(
            err(b"[1]"),
            "expected a JSON object keyed by the pipeline's inputs"
        );
        assert_eq!(err(b"{}"), "missing field `text` (Text)");
        assert_eq!(
            err(br#"{"text": 3}"#),
            "field `text`: expected Text, got `3`"
        );
        assert_eq!(err(b"  \n"), "empty line; expected a JSON object");
        assert!(err(b"\xff\xfe").contains("not UTF-8"));
    }
}
