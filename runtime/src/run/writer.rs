//! The output side of a run: one JSON line per request, `{"id": N, "ok": {…}, "latency_ms": x}`
//! or `{"id": N, "error": {"node": "…", "message": "…"}}`, in completion order or (ordered) in
//! input order. Output keys follow the pipeline's output declaration order.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use timely::scheduling::SyncActivator;

use crate::codec::{self, EdgeContext};
use crate::dataflow::sink::Outcome;
use crate::dataflow::Failure;
use crate::stats::LatencyHistogram;
use crate::value::Value;

/// Output is written in chunks of about this many bytes, each ending at a line end.
const CHUNK: usize = 1 << 16;

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub done: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

/// A progress callback.
pub type ProgressFn = dyn Fn(&Progress) + Send + Sync;

/// What the writer saw.
#[derive(Debug, Default)]
pub struct Written {
    pub records: u64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_node: BTreeMap<String, u64>,
    pub latency: LatencyHistogram,
    pub stopped_at: Option<u64>,
    /// When every [`MARK_EVERY`]th record was written (for [`Written::steady_throughput`]).
    marks: Vec<std::time::Instant>,
    seen: Seen,
}

/// Records between two marks of [`Written`].
pub const MARK_EVERY: u64 = 1024;

impl Written {
    /// Records per second while the pipeline was full: between the marks nearest 10% and
    /// 90% of the records, so that neither filling the pipeline at the start nor draining it
    /// at the end is counted. `None` under 20 marks (20,480 records).
    pub fn steady_throughput(&self) -> Option<f64> {
        steady(&self.marks)
    }
}

/// See [`Written::steady_throughput`]: `marks[k]` is when record `(k + 1) × MARK_EVERY` was
/// written.
fn steady(marks: &[std::time::Instant]) -> Option<f64> {
    let n = marks.len();
    if n < 20 {
        return None;
    }
    let (lo, hi) = (n / 10, n - 1 - n / 10);
    let s = marks[hi].saturating_duration_since(marks[lo]).as_secs_f64();
    (s > 0.0).then(|| (hi - lo) as f64 * MARK_EVERY as f64 / s)
}

/// The ids written so far, kept as a low-water mark plus the ids above it, so that checking
/// exactly-once takes memory bounded by the requests in flight, not by the input's length.
#[derive(Debug)]
struct Seen {
    /// Every id below this has been seen.
    below: u64,
    above: BTreeSet<u64>,
}

impl Default for Seen {
    /// Ids count from 1.
    fn default() -> Seen {
        Seen {
            below: 1,
            above: BTreeSet::new(),
        }
    }
}

impl Seen {
    /// Record an id; false if it was seen before. Ids in `skip` never come and count as seen.
    fn insert(&mut self, id: u64, skip: &std::collections::HashSet<u64>) -> bool {
        if id < self.below || !self.above.insert(id) {
            return false;
        }
        loop {
            if self.above.first() == Some(&self.below) {
                self.above.pop_first();
            } else if !skip.contains(&self.below) {
                break;
            }
            self.below += 1;
        }
        true
    }
}

pub struct WriterLink<'a> {
    pub output_names: Vec<String>,
    pub cx: &'a EdgeContext,
    pub ordered: bool,
    pub fail_fast: bool,
    pub stop: &'a AtomicBool,
    pub source: &'a SyncActivator,
    pub progress: Option<&'a ProgressFn>,
    pub start: Instant,
    /// Check that no id is written twice.
    pub check_ids: bool,
    /// Ids skipped by the reader (`--resume`): ordered output steps over them.
    pub skip: &'a std::collections::HashSet<u64>,
    /// Write `Bytes` and `Image` outputs as files here and put `{"$file": …}` in the records.
    pub files_dir: Option<&'a std::path::Path>,
}

fn error_line(buf: &mut Vec<u8>, id: u64, f: &Failure) {
    let _ = write!(buf, "{{\"id\":{id},\"error\":{{\"node\":");
    let _ = serde_json::to_writer(&mut *buf, &f.node);
    buf.extend_from_slice(b",\"message\":");
    let _ = serde_json::to_writer(&mut *buf, &f.message);
    buf.extend_from_slice(b"}}\n");
}

/// Format one outcome as a line; the failure (if any) it stands for.
fn format_outcome(
    buf: &mut Vec<u8>,
    o: Outcome,
    names: &[String],
    cx: &EdgeContext,
    files_dir: Option<&std::path::Path>,
) -> Option<Failure> {
    buf.clear();
    match o.result {
        Err(f) => {
            error_line(buf, o.id, &f);
            Some(f)
        }
        Ok(values) => {
            let _ = write!(buf, "{{\"id\":{},\"ok\":{{", o.id);
            for (i, (name, v)) in names.iter().zip(&values).enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                let _ = serde_json::to_writer(&mut *buf, name);
                buf.push(b':');
                let written = match files_dir {
                    Some(dir) => to_files(v, cx, dir, &format!("{}-{name}", o.id)).map(|j| {
                        let _ = serde_json::to_writer(&mut *buf, &j);
                    }),
                    None => write_value(buf, v, cx),
                };
                if let Err(e) = written {
                    let f = Failure::new("output", format!("output `{name}`: {e}"));
                    buf.clear();
                    error_line(buf, o.id, &f);
                    return Some(f);
                }
            }
            let ms = o.latency.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            let _ = writeln!(buf, "}},\"latency_ms\":{:.3}}}", ms);
            None
        }
    }
}

/// The file name extension for encoded bytes, from their first bytes.
fn extension(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "png"
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "jpg"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "webp"
    } else {
        "bin"
    }
}

/// A value's JSON with its `Bytes` and `Image` parts (also inside lists) written as files in
/// `dir`, named `{stem}.{ext}` (list elements `{stem}-{index}`), and referenced as `{"$file": …}`.
fn to_files(
    v: &Value,
    cx: &EdgeContext,
    dir: &std::path::Path,
    stem: &str,
) -> Result<serde_json::Value, String> {
    let bytes: std::sync::Arc<Vec<u8>> = match v {
        Value::Bytes(b) => std::sync::Arc::clone(b),
        Value::Image(_) => match &cx.images {
            Some(codec) => std::sync::Arc::new(codec.encode(v)?),
            None => return codec::encode(v, cx),
        },
        Value::List(items) => {
            return items
                .iter()
                .enumerate()
                .map(|(i, x)| to_files(x, cx, dir, &format!("{stem}-{i}")))
                .collect::<Result<Vec<_>, _>>()
                .map(serde_json::Value::Array)
        }
        Value::Tensor(t) => {
            let path = dir.join(format!("{stem}.npy"));
            crate::files::write_replacing(&path, &crate::npy::write(&t.shape, &t.data))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            return Ok(serde_json::json!({ "$npy": path.display().to_string() }));
        }
        other => return codec::encode(other, cx),
    };
    let path = dir.join(format!("{stem}.{}", extension(&bytes)));
    crate::files::write_replacing(&path, bytes.as_slice())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(serde_json::json!({ "$file": path.display().to_string() }))
}

/// Write one value's JSON; scalars directly, the rest through the codec.
fn write_value(buf: &mut Vec<u8>, v: &Value, cx: &EdgeContext) -> Result<(), String> {
    match v {
        Value::Int(i) => {
            let _ = write!(buf, "{i}");
        }
        Value::Text(s) => {
            let _ = serde_json::to_writer(&mut *buf, s);
        }
        Value::Bool(b) => buf.extend_from_slice(if *b { b"true" } else { b"false" }),
        other => {
            let j = codec::encode(other, cx)?;
            let _ = serde_json::to_writer(&mut *buf, &j);
        }
    }
    Ok(())
}

/// Write outcomes until every sender is gone.
pub fn write_outcomes(
    rx: Receiver<Outcome>,
    out: &mut dyn Write,
    link: WriterLink<'_>,
) -> std::io::Result<Written> {
    let mut w = Written::default();
    let mut buf = Vec::with_capacity(256);
    let mut held: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut next = 1u64;
    let mut last_progress = Instant::now();
    let mut stopping = false;
    // Output leaves in whole lines only (never a line cut at a buffer boundary), so that a
    // process that dies leaves a file of complete records.
    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK + 4096);
    loop {
        let o = match rx.try_recv() {
            Ok(o) => o,
            Err(TryRecvError::Empty) => {
                out.write_all(&pending)?;
                pending.clear();
                out.flush()?;
                match rx.recv() {
                    Ok(o) => o,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let id = o.id;
        let latency = o.latency;
        if link.check_ids && !w.seen.insert(id, link.skip) {
            return Err(std::io::Error::other(format!(
                "request {id} finished twice"
            )));
        }
        w.records += 1;
        if w.records % MARK_EVERY == 0 {
            w.marks.push(std::time::Instant::now());
        }
        match format_outcome(&mut buf, o, &link.output_names, link.cx, link.files_dir) {
            Some(f) => {
                w.errors += 1;
                *w.errors_by_node.entry(f.node).or_default() += 1;
                if link.fail_fast && !stopping {
                    stopping = true;
                    w.stopped_at = Some(id);
                    link.stop.store(true, Ordering::SeqCst);
                    let _ = link.source.activate();
                }
            }
            None => {
                w.ok += 1;
                if let Some(d) = latency {
                    w.latency.record(d);
                }
            }
        }
        if link.ordered {
            held.insert(id, std::mem::take(&mut buf));
            loop {
                if link.skip.contains(&next) {
                    next += 1;
                } else if let Some(line) = held.remove(&next) {
                    pending.extend_from_slice(&line);
                    next += 1;
                } else {
                    break;
                }
            }
        } else {
            pending.extend_from_slice(&buf);
        }
        if pending.len() >= CHUNK {
            out.write_all(&pending)?;
            pending.clear();
        }
        if let Some(p) = link.progress {
            if last_progress.elapsed() >= Duration::from_millis(100) {
                last_progress = Instant::now();
                p(&Progress {
                    done: w.records,
                    errors: w.errors,
                    elapsed: link.start.elapsed(),
                });
            }
        }
    }
    // After a stop, ids may have gaps: write what is held in input order.
    for line in held.into_values() {
        pending.extend_from_slice(&line);
    }
    out.write_all(&pending)?;
    out.flush()?;
    if let Some(p) = link.progress {
        p(&Progress {
            done: w.records,
            errors: w.errors,
            elapsed: link.start.elapsed(),
        });
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_stay_compact_and_catch_repeats() {
        let mut s = Seen::default();
        let skip: std::collections::HashSet<u64> = [6].into_iter().collect();
        for id in [1, 3, 2, 5] {
            assert!(s.insert(id, &skip));
        }
        assert_eq!((s.below, s.above.len()), (4, 1));
        assert!(!s.insert(0, &skip));
        assert!(!s.insert(2, &skip));
        assert!(!s.insert(5, &skip));
        assert!(s.insert(4, &skip));
        assert_eq!((s.below, s.above.len()), (7, 0));
    }

    #[test]
    fn steady_throughput_leaves_out_filling_and_draining() {
        let t0 = std::time::Instant::now();
        let ms = std::time::Duration::from_millis;
        // 30 marks: the first 3 and last 3 a second apart (slow fill and drain), the rest
        // 10 ms apart.
        let mut marks = Vec::new();
        let mut t = t0;
        for k in 0..30 {
            t += if !(3..27).contains(&k) {
                ms(1000)
            } else {
                ms(10)
            };
            marks.push(t);
        }
        let r = steady(&marks).expect("enough marks");
        assert!((r - MARK_EVERY as f64 / 0.010).abs() < 1.0, "{r}");
        assert_eq!(steady(&marks[..19]), None);
    }

    #[test]
    fn records_have_the_documented_shape() {
        let cx = EdgeContext::plain();
        let names = vec!["b".to_string(), "a".to_string()];
        let mut buf = Vec::new();
        let ok = Outcome {
            id: 3,
            result: Ok(vec![
                Value::Text("x\"y".into()),
                Value::List(vec![Value::Int(1)]),
            ]),
            latency: Some(Duration::from_micros(1500)),
        };
        assert_eq!(format_outcome(&mut buf, ok, &names, &cx, None), None);
        assert_eq!(
            String::from_utf8_lossy(&buf),
            "{\"id\":3,\"ok\":{\"b\":\"x\\\"y\",\"a\":[1]},\"latency_ms\":1.500}\n"
        );
        let err = Outcome {
            id: 4,
            result: Err(Failure::new("n1", "bad")),
            latency: None,
        };
        assert!(format_outcome(&mut buf, err, &names, &cx, None).is_some());
        assert_eq!(
            String::from_utf8_lossy(&buf),
            "{\"id\":4,\"error\":{\"node\":\"n1\",\"message\":\"bad\"}}\n"
        );
        let nan = Outcome {
            id: 5,
            result: Ok(vec![Value::Float(f64::NAN), Value::Int(1)]),
            latency: None,
        };
        let f = format_outcome(&mut buf, nan, &names, &cx, None).expect("fails");
        assert_eq!(f.node, "output");
        let line: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        assert_eq!(line["id"], 5);
    }

    #[test]
    fn output_files_replace_planted_links_instead_of_writing_through_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, b"keep").expect("write");
        std::os::unix::fs::symlink(&victim, dir.path().join("3-b.bin")).expect("ln");
        let o = Outcome {
            id: 3,
            result: Ok(vec![Value::Bytes(b"new".to_vec().into())]),
            latency: None,
        };
        let mut buf = Vec::new();
        let names = vec!["b".to_string()];
        let cx = EdgeContext::plain();
        assert_eq!(
            format_outcome(&mut buf, o, &names, &cx, Some(dir.path())),
            None
        );
        assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");
        assert_eq!(
            std::fs::read(dir.path().join("3-b.bin")).expect("out"),
            b"new"
        );
    }

    #[test]
    fn bytes_outputs_go_to_files_named_by_id_and_output() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cx = EdgeContext::plain();
        let names = vec!["png".to_string(), "parts".to_string(), "n".to_string()];
        let png = b"\x89PNG\r\n\x1a\nrest".to_vec();
        let o = Outcome {
            id: 12,
            result: Ok(vec![
                Value::Bytes(png.clone().into()),
                Value::List(vec![
                    Value::Bytes(b"ab".to_vec().into()),
                    Value::Bytes(Vec::new().into()),
                ]),
                Value::Int(2),
            ]),
            latency: None,
        };
        let mut buf = Vec::new();
        assert_eq!(
            format_outcome(&mut buf, o, &names, &cx, Some(dir.path())),
            None
        );
        let line: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        let file =
            |j: &serde_json::Value| std::path::PathBuf::from(j["$file"].as_str().expect("a $file"));
        let p = file(&line["ok"]["png"]);
        assert_eq!(p, dir.path().join("12-png.png"));
        assert_eq!(std::fs::read(&p).expect("written"), png);
        assert_eq!(
            file(&line["ok"]["parts"][0]),
            dir.path().join("12-parts-0.bin")
        );
        assert_eq!(
            std::fs::read(dir.path().join("12-parts-1.bin")).expect("written"),
            b""
        );
        assert_eq!(line["ok"]["n"], 2);
        // Tensors go to .npy files.
        let t = Outcome {
            id: 14,
            result: Ok(vec![
                Value::Tensor(std::sync::Arc::new(crate::value::TensorData {
                    dtype: "f32".into(),
                    shape: vec![2],
                    data: vec![0.5, -1.0],
                })),
                Value::List(vec![]),
                Value::Int(0),
            ]),
            latency: None,
        };
        assert_eq!(
            format_outcome(&mut buf, t, &names, &cx, Some(dir.path())),
            None
        );
        let line: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        let npy = line["ok"]["png"]["$npy"].as_str().expect("a $npy");
        let back = crate::npy::read(&std::fs::read(npy).expect("written")).expect("npy");
        assert_eq!(back, (vec![2], vec![0.5, -1.0]));
        // A folder that cannot be written makes that request an error record.
        let o = Outcome {
            id: 13,
            result: Ok(vec![
                Value::Bytes(png.into()),
                Value::List(vec![]),
                Value::Int(0),
            ]),
            latency: None,
        };
        let missing = dir.path().join("no/such/folder");
        let f = format_outcome(&mut buf, o, &names, &cx, Some(&missing)).expect("fails");
        assert_eq!(f.node, "output");
        assert!(f.message.contains("cannot write"), "{}", f.message);
    }
}
