//! The JSON encoding of values at the edges of a run (language.md §6): how a request's fields
//! become [`Value`]s and how results become JSON again.
//!
//! | type | JSON |
//! |---|---|
//! | `Text` | a string |
//! | `Int`, `Float` | a number (an `Int` must be integral) |
//! | `Bool` | `true` / `false` |
//! | `Json` | any value |
//! | `List<T>` | an array |
//! | `Box` | `{"x": …, "y": …, "w": …, "h": …}` |
//! | `Tensor<d, [dims]>` | a nested array of numbers, or `{"$npy": "path"}` (a NumPy `.npy` file) |
//! | `Bytes` | `{"$base64": "…"}` or `{"$file": "path"}` (relative to the base folder) |
//! | `Image` | like `Bytes`: the encoded file's bytes (PNG, JPEG, …); see below |
//!
//! An `Image` crosses the edge as encoded bytes. This module does not decode images: it hands
//! the bytes to an [`ImageCodec`], which the runner builds from the registry's `image.decode`
//! and `image.encode` builtins when they are registered. Without them, a pipeline takes and
//! returns `Bytes` and calls `std.image.decode` itself.
//!
//! Results are encoded the same way; `Bytes` always as `{"$base64": …}`.

use std::sync::Arc;

use mars_plan::{DataType, Dim};
use serde_json::Value as Json;

use crate::files::{read_regular, FileRoots, MAX_REQUEST_FILE_BYTES};
use crate::value::{BoxData, TensorData, Value};

/// Turns encoded image bytes into an `Image` value and back. See the module docs.
pub trait ImageCodec: Send + Sync {
    /// Decode file bytes (PNG, JPEG, …) into a `Value::Image`.
    fn decode(&self, bytes: Vec<u8>) -> Result<Value, String>;
    /// Encode a `Value::Image` into file bytes (PNG).
    fn encode(&self, image: &Value) -> Result<Vec<u8>, String>;
}

/// Where relative `$file` paths resolve, which folders they may name, and how images are
/// decoded.
#[derive(Clone, Default)]
pub struct EdgeContext {
    /// The folder `{"$file": …}` paths are relative to (the input file's folder for `marsc run`).
    pub base_dir: Option<std::path::PathBuf>,
    /// The image codec, when the registry offers one.
    pub images: Option<Arc<dyn ImageCodec>>,
    /// Folders `$file`/`$npy` paths may name besides `base_dir` (`--allow-files`). A path is
    /// read only if, canonicalized, it lies inside `base_dir` or one of these; with neither,
    /// every `$file` is refused (SPEC 7.2).
    pub allow: Vec<std::path::PathBuf>,
}

impl EdgeContext {
    /// A context with no base folder and no images: `$file` and `$npy` are refused.
    pub fn plain() -> EdgeContext {
        EdgeContext::default()
    }

    /// Read the file a request names: inside the allowed folders, a regular file, at most
    /// [`MAX_REQUEST_FILE_BYTES`].
    fn read_file(&self, key: &str, path: &str) -> Result<Vec<u8>, String> {
        let roots = FileRoots::new(self.base_dir.iter().chain(&self.allow).map(|p| p.as_path()))
            .map_err(|e| format!("cannot read `{key}` {path}: {e}"))?;
        let full = roots
            .resolve(self.base_dir.as_deref(), path)
            .map_err(|e| format!("cannot read `{key}` {}: {e}", shown(path)))?;
        read_regular(&full, MAX_REQUEST_FILE_BYTES)
            .map_err(|e| format!("cannot read `{key}` {}: {e}", shown(path)))
    }
}

/// A path from a request as an error shows it: control characters escaped.
fn shown(path: &str) -> String {
    path.escape_debug().to_string()
}

fn short(json: &Json) -> String {
    let s = json.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Decode one JSON value as a value of type `ty`.
pub fn decode(json: &Json, ty: &DataType, cx: &EdgeContext) -> Result<Value, String> {
    let mismatch = || format!("expected {ty}, got `{}`", short(json));
    Ok(match ty {
        DataType::Text => Value::Text(json.as_str().ok_or_else(mismatch)?.to_string()),
        DataType::Int => Value::Int(json.as_i64().ok_or_else(mismatch)?),
        DataType::Float => Value::Float(json.as_f64().ok_or_else(mismatch)?),
        DataType::Bool => Value::Bool(json.as_bool().ok_or_else(mismatch)?),
        DataType::Json | DataType::Var(_) => Value::Json(json.clone()),
        DataType::Bytes => Value::Bytes(Arc::new(decode_bytes(json, ty, cx)?)),
        DataType::Image => {
            let bytes = decode_bytes(json, ty, cx)?;
            match &cx.images {
                Some(codec) => codec.decode(bytes)?,
                None => {
                    return Err("an Image input needs the `image.decode` builtin, which this runtime does not have; \
                                declare the input as Bytes and call std.image.decode"
                        .to_string())
                }
            }
        }
        DataType::Box => {
            let f = |k: &str| json.get(k).and_then(Json::as_f64).ok_or_else(mismatch);
            Value::Box(BoxData {
                x: f("x")?,
                y: f("y")?,
                w: f("w")?,
                h: f("h")?,
            })
        }
        DataType::List(elem) => Value::List(
            json.as_array()
                .ok_or_else(mismatch)?
                .iter()
                .enumerate()
                .map(|(i, j)| decode(j, elem, cx).map_err(|e| format!("element {i}: {e}")))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Tensor(dtype, dims) => {
            let (shape, data) = match json.get("$npy") {
                Some(path) => {
                    let path = path.as_str().ok_or("`$npy` must be a string")?;
                    let bytes = cx.read_file("$npy", path)?;
                    crate::npy::read(&bytes).map_err(|e| format!("`$npy` {}: {e}", shown(path)))?
                }
                None => {
                    let mut shape = Vec::new();
                    let mut data = Vec::new();
                    flatten(json, 0, &mut shape, &mut data)?;
                    (shape, data)
                }
            };
            if shape.len() != dims.len() {
                return Err(format!(
                    "expected a tensor of rank {}, got rank {}",
                    dims.len(),
                    shape.len()
                ));
            }
            let mut symbols: Vec<(&str, usize)> = Vec::new();
            for (i, (d, &n)) in dims.iter().zip(&shape).enumerate() {
                match d {
                    Dim::Fixed(want) if *want != n as u64 => {
                        return Err(format!("tensor dimension {i} is {n}, expected {want}"));
                    }
                    Dim::Sym(s) => match symbols.iter().find(|(name, _)| name == s) {
                        Some((_, m)) if *m != n => {
                            return Err(format!(
                                "tensor dimension {i} ({s}) is {n}, but {s} is {m} elsewhere"
                            ));
                        }
                        Some(_) => {}
                        None => symbols.push((s, n)),
                    },
                    Dim::Fixed(_) => {}
                }
            }
            Value::Tensor(Arc::new(TensorData {
                dtype: dtype.name().to_string(),
                shape,
                data,
            }))
        }
    })
}

fn decode_bytes(json: &Json, ty: &DataType, cx: &EdgeContext) -> Result<Vec<u8>, String> {
    if let Some(b64) = json.get("$base64") {
        let text = b64.as_str().ok_or("`$base64` must be a string")?;
        return base64_decode(text).ok_or_else(|| "invalid `$base64` text".to_string());
    }
    if let Some(path) = json.get("$file") {
        let path = path.as_str().ok_or("`$file` must be a string")?;
        return cx.read_file("$file", path);
    }
    Err(format!(
        "expected {ty} as {{\"$base64\": …}} or {{\"$file\": …}}, got `{}`",
        short(json)
    ))
}

/// Walk a nested array; the first path down fixes the shape, every other must match it.
fn flatten(
    json: &Json,
    depth: usize,
    shape: &mut Vec<usize>,
    data: &mut Vec<f32>,
) -> Result<(), String> {
    match json {
        Json::Array(items) => {
            if depth < shape.len() {
                if shape[depth] != items.len() {
                    return Err("ragged tensor".into());
                }
            } else if data.is_empty() {
                shape.push(items.len());
            } else {
                return Err("ragged tensor".into());
            }
            items
                .iter()
                .try_for_each(|j| flatten(j, depth + 1, shape, data))
        }
        Json::Number(n) if depth == shape.len() => {
            let x = n.as_f64().ok_or("bad number")? as f32;
            if !x.is_finite() {
                return Err(format!(
                    "tensor element {} is {n}, beyond the range of f32",
                    data.len()
                ));
            }
            data.push(x);
            Ok(())
        }
        Json::Number(_) => Err("ragged tensor".into()),
        other => Err(format!("tensor element `{}` is not a number", short(other))),
    }
}

/// Encode a value as JSON.
pub fn encode(v: &Value, cx: &EdgeContext) -> Result<Json, String> {
    use serde_json::json;
    Ok(match v {
        Value::Bytes(b) => json!({ "$base64": base64_encode(b) }),
        Value::Text(s) => json!(s),
        Value::Int(i) => json!(i),
        Value::Float(f) => {
            if !f.is_finite() {
                return Err(format!("the float {f} has no JSON encoding"));
            }
            json!(f)
        }
        Value::Bool(b) => json!(b),
        Value::Json(j) => j.clone(),
        Value::Image(_) => match &cx.images {
            Some(codec) => json!({ "$base64": base64_encode(&codec.encode(v)?) }),
            None => {
                return Err("an Image output needs the `image.encode` builtin, which this runtime does not have; \
                            encode it with std.image.encode and return Bytes"
                    .to_string())
            }
        },
        Value::Box(b) => json!({"x": b.x, "y": b.y, "w": b.w, "h": b.h}),
        Value::List(items) => Json::Array(items.iter().map(|x| encode(x, cx)).collect::<Result<_, _>>()?),
        Value::Tensor(t) => {
            if t.data.len() != t.shape.iter().product::<usize>() {
                return Err(format!("tensor of shape {:?} holds {} elements", t.shape, t.data.len()));
            }
            // As for a Float: NaN and infinity have no JSON encoding (SPEC 3.2), and `null`
            // would not round-trip.
            if let Some(i) = t.data.iter().position(|x| !x.is_finite()) {
                return Err(format!(
                    "tensor element {i} is {}, which has no JSON encoding (write tensors as .npy with --files-dir)",
                    t.data[i]
                ));
            }
            nest(&t.shape, &t.data)
        }
    })
}

fn nest(shape: &[usize], data: &[f32]) -> Json {
    match shape.split_first() {
        None => data.first().map_or(Json::Null, |&x| serde_json::json!(x)),
        Some((&n, rest)) => {
            let step = rest.iter().product::<usize>();
            Json::Array(
                (0..n)
                    .map(|i| nest(rest, &data[i * step..(i + 1) * step]))
                    .collect(),
            )
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding optional; `None` on a character outside the alphabet.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ty(s: &str) -> DataType {
        s.parse().expect(s)
    }

    #[test]
    fn values_round_trip_through_json() {
        let cx = EdgeContext::plain();
        for (t, j) in [
            ("Text", json!("hé")),
            ("Int", json!(-3)),
            ("Float", json!(2.5)),
            ("Bool", json!(true)),
            ("Json", json!({"a": [1, null]})),
            ("List<List<Int>>", json!([[1, 2], [], [3]])),
            ("Box", json!({"x": 1.0, "y": 2.0, "w": 3.0, "h": 4.0})),
            ("Tensor<f32, [2, N]>", json!([[1.0, 2.0], [3.0, 4.0]])),
            ("Bytes", json!({"$base64": "aGVsbG8="})),
        ] {
            let v = decode(&j, &ty(t), &cx).expect(t);
            assert_eq!(encode(&v, &cx).expect(t), j, "{t}");
        }
    }

    #[test]
    fn mismatches_name_the_expected_type() {
        let cx = EdgeContext::plain();
        assert_eq!(
            decode(&json!("3"), &ty("Int"), &cx),
            Err("expected Int, got `\"3\"`".to_string())
        );
        assert_eq!(
            decode(&json!(1.5), &ty("Int"), &cx),
            Err("expected Int, got `1.5`".to_string())
        );
        let e = decode(&json!([1, "x"]), &ty("List<Int>"), &cx).expect_err("fails");
        assert_eq!(e, "element 1: expected Int, got `\"x\"`");
        let e = decode(&json!([[1, 2], [3]]), &ty("Tensor<f32, [2, 2]>"), &cx).expect_err("fails");
        assert_eq!(e, "ragged tensor");
        let e = decode(&json!([[1, 2]]), &ty("Tensor<f32, [N, N]>"), &cx).expect_err("fails");
        assert!(e.contains("N is 1 elsewhere"), "{e}");
        assert!(decode(&json!({"$base64": "!!"}), &ty("Bytes"), &cx).is_err());
        let e = decode(&json!({"$base64": "aGk="}), &ty("Image"), &cx).expect_err("fails");
        assert!(e.contains("image.decode"), "{e}");
    }

    #[test]
    fn file_bytes_resolve_against_the_base_folder() {
        let dir = std::env::temp_dir().join(format!("mars-codec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("a.bin"), b"\x00\x01\xff").expect("write");
        let cx = EdgeContext {
            base_dir: Some(dir.clone()),
            ..EdgeContext::default()
        };
        let v = decode(&json!({"$file": "a.bin"}), &ty("Bytes"), &cx).expect("reads");
        assert_eq!(v, Value::Bytes(Arc::new(vec![0, 1, 255])));
        let e = decode(&json!({"$file": "missing.bin"}), &ty("Bytes"), &cx).expect_err("fails");
        assert!(e.contains("missing.bin"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn npy_tensors_resolve_against_the_base_folder_and_are_checked_like_arrays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data: Vec<f32> = (0..6).map(|i| i as f32).collect();
        std::fs::write(
            dir.path().join("t.npy"),
            crate::npy::write(&[1, 2, 3], &data),
        )
        .expect("write");
        let cx = EdgeContext {
            base_dir: Some(dir.path().to_path_buf()),
            ..EdgeContext::default()
        };
        let ty: DataType = "Tensor<f32, [1, H, W]>".parse().expect("type");
        let v = decode(&serde_json::json!({"$npy": "t.npy"}), &ty, &cx).expect("decodes");
        let Value::Tensor(t) = v else {
            panic!("a tensor")
        };
        assert_eq!((t.shape.clone(), t.data.clone()), (vec![1, 2, 3], data));
        let wrong: DataType = "Tensor<f32, [2, H, W]>".parse().expect("type");
        let e = decode(&serde_json::json!({"$npy": "t.npy"}), &wrong, &cx).expect_err("dim 0");
        assert!(e.contains("dimension 0"), "{e}");
        let e = decode(&serde_json::json!({"$npy": "none.npy"}), &ty, &cx).expect_err("missing");
        assert!(e.contains("cannot read `$npy`"), "{e}");
    }

    #[test]
    fn non_finite_floats_have_no_encoding() {
        let cx = EdgeContext::plain();
        assert!(encode(&Value::Float(f64::NAN), &cx).is_err());
        let t = |x: f32| {
            Value::Tensor(Arc::new(TensorData {
                dtype: "f32".into(),
                shape: vec![2],
                data: vec![1.0, x],
            }))
        };
        assert!(encode(&t(2.0), &cx).is_ok());
        let e = encode(&t(f32::NAN), &cx).expect_err("NaN");
        assert!(e.starts_with("tensor element 1 is NaN"), "{e}");
        assert!(encode(&t(f32::INFINITY), &cx).is_err());
        let e = decode(&json!([1.0, 1e39]), &ty("Tensor<f32, [2]>"), &cx).expect_err("1e39");
        assert!(e.contains("beyond the range of f32"), "{e}");
    }

    #[test]
    fn files_outside_the_allowed_folders_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = dir.path().join("requests");
        std::fs::create_dir(&inner).expect("mkdir");
        std::fs::write(dir.path().join("secret.bin"), b"s").expect("write");
        std::fs::write(inner.join("ok.bin"), b"k").expect("write");
        let cx = EdgeContext {
            base_dir: Some(inner.clone()),
            ..EdgeContext::default()
        };
        let bytes = ty("Bytes");
        assert!(decode(&json!({"$file": "ok.bin"}), &bytes, &cx).is_ok());
        for bad in [
            "../secret.bin",
            "/etc/passwd",
            "/proc/self/environ",
            "/dev/zero",
        ] {
            let e = decode(&json!({"$file": bad}), &bytes, &cx).expect_err(bad);
            assert!(e.contains("outside the folders"), "{bad}: {e}");
        }
        let e =
            decode(&json!({"$file": "ok.bin"}), &bytes, &EdgeContext::plain()).expect_err("plain");
        assert!(e.contains("--allow-files"), "{e}");
        let wide = EdgeContext {
            allow: vec![dir.path().to_path_buf()],
            ..cx
        };
        assert!(decode(&json!({"$file": "../secret.bin"}), &bytes, &wide).is_ok());
        let e = decode(
            &json!({"$npy": "../secret.bin"}),
            &ty("Tensor<f32, [1]>"),
            &EdgeContext {
                base_dir: Some(inner),
                ..EdgeContext::default()
            },
        )
        .expect_err("npy");
        assert!(e.contains("outside the folders"), "{e}");
    }
}
