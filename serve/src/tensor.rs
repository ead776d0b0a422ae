//! KServe v2 tensors and Mars types: the datatype and shape a pipeline input or output shows
//! as, and converting between a tensor of N rows and N values.
//!
//! | Mars type | datatype | shape |
//! |---|---|---|
//! | `Text`, `Bytes`, `Image`, `Json` | `BYTES` (UTF-8 text; raw bytes; encoded image file; JSON text) | `[-1]` |
//! | `Int` | `INT64` | `[-1]` |
//! | `Float` | `FP64` | `[-1]` |
//! | `Bool` | `BOOL` | `[-1]` |
//! | `Box` | `FP64` (x, y, w, h) | `[-1, 4]` |
//! | `Tensor<d, [dims]>` | its dtype (`FP32`, `FP16`, `BF16`, `INT64`, `INT32`, `UINT8`) | `[-1, dims…]` (a symbol is `-1`) |
//! | `List<T>` | `T`'s | `[-1, -1]` (a variable dimension) |
//!
//! The first dimension is the batch: row `i` of every input is request `i`. Inputs accept any
//! integer datatype for `Int` and `FP32` for `Float`.

use mars_plan::{DType, DataType, Dim};
use mars_runtime::{TensorData, Value};
use serde_json::Value as Json;

/// A tensor's elements, flattened in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum Elements {
    Bytes(Vec<Vec<u8>>),
    Int(Vec<i64>),
    Float(Vec<f64>),
    Bool(Vec<bool>),
}

impl Elements {
    pub fn len(&self) -> usize {
        match self {
            Elements::Bytes(v) => v.len(),
            Elements::Int(v) => v.len(),
            Elements::Float(v) => v.len(),
            Elements::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Elements,
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "FP32",
        DType::F16 => "FP16",
        DType::BF16 => "BF16",
        DType::I64 => "INT64",
        DType::I32 => "INT32",
        DType::U8 => "UINT8",
    }
}

/// The datatype and shape (batch dimension first) a Mars type shows as.
pub fn signature(ty: &DataType) -> (String, Vec<i64>) {
    match ty {
        DataType::Text | DataType::Bytes | DataType::Image | DataType::Json | DataType::Var(_) => {
            ("BYTES".into(), vec![-1])
        }
        DataType::Int => ("INT64".into(), vec![-1]),
        DataType::Float => ("FP64".into(), vec![-1]),
        DataType::Bool => ("BOOL".into(), vec![-1]),
        DataType::Box => ("FP64".into(), vec![-1, 4]),
        DataType::Tensor(d, dims) => {
            let mut shape = vec![-1];
            shape.extend(dims.iter().map(|d| match d {
                Dim::Fixed(n) => *n as i64,
                Dim::Sym(_) => -1,
            }));
            (dtype_name(*d).into(), shape)
        }
        DataType::List(elem) => {
            let (dt, _) = signature(elem);
            (dt, vec![-1, -1])
        }
    }
}

/// Elements of one row (the tensor's elements after the batch dimension).
fn row_len(shape: &[i64]) -> Result<usize, String> {
    shape[1..].iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .map(|d| acc * d)
            .map_err(|_| format!("dimension {d} is not a size"))
    })
}

/// The number of rows (the first dimension) of an input tensor, checked against its data.
pub fn rows_of(t: &Tensor) -> Result<usize, String> {
    let Some(&n) = t.shape.first() else {
        return Err(format!(
            "input `{}` has an empty shape; the first dimension is the batch",
            t.name
        ));
    };
    let n = usize::try_from(n)
        .map_err(|_| format!("input `{}`: batch dimension {n} is not a size", t.name))?;
    let per = row_len(&t.shape).map_err(|e| format!("input `{}`: {e}", t.name))?;
    if n * per != t.data.len() {
        return Err(format!(
            "input `{}`: shape {:?} holds {} elements, but {} were sent",
            t.name,
            t.shape,
            n * per,
            t.data.len()
        ));
    }
    Ok(n)
}

/// Split an input tensor into one value of type `ty` per row. `decode_bytes` turns a BYTES
/// element into the value of a `Bytes`/`Image` type (the server's codec).
pub fn to_rows(
    t: &Tensor,
    ty: &DataType,
    decode_bytes: &dyn Fn(&[u8], &DataType) -> Result<Value, String>,
) -> Result<Vec<Value>, String> {
    let n = rows_of(t)?;
    let per = row_len(&t.shape)?;
    let what = |e: String| format!("input `{}`: {e}", t.name);
    let scalar_row =
        |k: usize, ty: &DataType| -> Result<Value, String> { element(t, k, ty, decode_bytes) };
    (0..n)
        .map(|r| match ty {
            DataType::List(elem) => (0..per)
                .map(|j| scalar_row(r * per + j, elem))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::List),
            DataType::Box => {
                if per != 4 {
                    return Err("a Box row has 4 elements (x, y, w, h)".into());
                }
                let f = |j: usize| match &t.data {
                    Elements::Float(v) => Ok(v[r * 4 + j]),
                    Elements::Int(v) => Ok(v[r * 4 + j] as f64),
                    _ => Err(format!("a Box is FP64, got {}", t.datatype)),
                };
                Ok(Value::Box(mars_runtime::BoxData {
                    x: f(0)?,
                    y: f(1)?,
                    w: f(2)?,
                    h: f(3)?,
                }))
            }
            DataType::Tensor(d, dims) => {
                let data: Vec<f32> = match &t.data {
                    Elements::Float(v) => v[r * per..(r + 1) * per]
                        .iter()
                        .map(|&x| x as f32)
                        .collect(),
                    Elements::Int(v) => v[r * per..(r + 1) * per]
                        .iter()
                        .map(|&x| x as f32)
                        .collect(),
                    _ => return Err(format!("a tensor input takes numbers, got {}", t.datatype)),
                };
                let shape: Vec<usize> = t.shape[1..].iter().map(|&d| d as usize).collect();
                if shape.len() != dims.len() {
                    return Err(format!(
                        "expected rows of rank {}, got rank {}",
                        dims.len(),
                        shape.len()
                    ));
                }
                for (i, (want, &got)) in dims.iter().zip(&shape).enumerate() {
                    if let Dim::Fixed(w) = want {
                        if *w != got as u64 {
                            return Err(format!("row dimension {i} is {got}, expected {w}"));
                        }
                    }
                }
                Ok(Value::Tensor(std::sync::Arc::new(TensorData {
                    dtype: d.name().to_string(),
                    shape,
                    data,
                })))
            }
            scalar => {
                if per != 1 {
                    return Err(format!(
                        "a {scalar} input has one element per row, got {per}"
                    ));
                }
                scalar_row(r, scalar)
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(what)
}

fn element(
    t: &Tensor,
    k: usize,
    ty: &DataType,
    decode_bytes: &dyn Fn(&[u8], &DataType) -> Result<Value, String>,
) -> Result<Value, String> {
    let mismatch = || format!("a {ty} element cannot come from a {} tensor", t.datatype);
    Ok(match (ty, &t.data) {
        (DataType::Text, Elements::Bytes(v)) => Value::Text(
            String::from_utf8(v[k].clone())
                .map_err(|_| format!("element {k} is not UTF-8 text"))?,
        ),
        (DataType::Json, Elements::Bytes(v)) => Value::Json(
            serde_json::from_slice(&v[k]).map_err(|e| format!("element {k} is not JSON: {e}"))?,
        ),
        (DataType::Bytes | DataType::Image, Elements::Bytes(v)) => decode_bytes(&v[k], ty)?,
        (DataType::Int, Elements::Int(v)) => Value::Int(v[k]),
        (DataType::Float, Elements::Float(v)) => Value::Float(v[k]),
        (DataType::Float, Elements::Int(v)) => Value::Float(v[k] as f64),
        (DataType::Bool, Elements::Bool(v)) => Value::Bool(v[k]),
        _ => return Err(mismatch()),
    })
}

/// Join N rows of output `name` of type `ty` into one tensor.
pub fn from_rows(
    name: &str,
    ty: &DataType,
    rows: &[Value],
    encode_bytes: &dyn Fn(&Value) -> Result<Vec<u8>, String>,
) -> Result<Tensor, String> {
    let (datatype, mut shape) = signature(ty);
    shape[0] = rows.len() as i64;
    let mut data = match datatype.as_str() {
        "BYTES" => Elements::Bytes(Vec::new()),
        "INT64" | "INT32" | "UINT8" => Elements::Int(Vec::new()),
        "BOOL" => Elements::Bool(Vec::new()),
        _ => Elements::Float(Vec::new()),
    };
    let mut row_shape: Option<Vec<usize>> = None;
    for (r, v) in rows.iter().enumerate() {
        let mut this_shape = Vec::new();
        push_value(&mut data, v, &mut this_shape, encode_bytes)
            .map_err(|e| format!("output `{name}` row {r}: {e}"))?;
        match &row_shape {
            None => row_shape = Some(this_shape),
            Some(s) if *s != this_shape => {
                return Err(format!(
                    "output `{name}`: rows have different shapes ({s:?} and {this_shape:?}); send one row per request"
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(s) = row_shape {
        shape.truncate(1);
        shape.extend(s.iter().map(|&d| d as i64));
    } else {
        for d in shape.iter_mut().skip(1) {
            *d = (*d).max(0);
        }
    }
    Ok(Tensor {
        name: name.to_string(),
        datatype,
        shape,
        data,
    })
}

fn push_value(
    data: &mut Elements,
    v: &Value,
    shape: &mut Vec<usize>,
    encode_bytes: &dyn Fn(&Value) -> Result<Vec<u8>, String>,
) -> Result<(), String> {
    match (data, v) {
        (Elements::Bytes(out), Value::Text(s)) => out.push(s.clone().into_bytes()),
        (Elements::Bytes(out), Value::Json(j)) => out.push(j.to_string().into_bytes()),
        (Elements::Bytes(out), v @ (Value::Bytes(_) | Value::Image(_))) => {
            out.push(encode_bytes(v)?)
        }
        (Elements::Int(out), Value::Int(i)) => out.push(*i),
        (Elements::Float(out), Value::Float(f)) => out.push(*f),
        (Elements::Float(out), Value::Int(i)) => out.push(*i as f64),
        (Elements::Bool(out), Value::Bool(b)) => out.push(*b),
        (Elements::Float(out), Value::Box(b)) => {
            out.extend([b.x, b.y, b.w, b.h]);
            shape.push(4);
        }
        (Elements::Float(out), Value::Tensor(t)) => {
            out.extend(t.data.iter().map(|&x| f64::from(x)));
            shape.extend(&t.shape);
        }
        (Elements::Int(out), Value::Tensor(t)) => {
            out.extend(t.data.iter().map(|&x| x as i64));
            shape.extend(&t.shape);
        }
        (data, Value::List(items)) => {
            shape.push(items.len());
            let mut inner = None;
            for x in items {
                let mut s = Vec::new();
                push_value(data, x, &mut s, encode_bytes)?;
                if inner.get_or_insert_with(|| s.clone()) != &s {
                    return Err("a ragged list".into());
                }
            }
            shape.extend(inner.unwrap_or_default());
        }
        (_, v) => return Err(format!("a {} value does not fit this datatype", v.kind())),
    }
    Ok(())
}

/// Elements from a JSON `data` array (flat or nested) of the given datatype.
pub fn from_json(datatype: &str, data: &Json) -> Result<Elements, String> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let bad = |j: &Json| format!("a {datatype} tensor cannot hold `{j}`");
    Ok(match datatype {
        "BYTES" => Elements::Bytes(
            flat.iter()
                .map(|j| match j {
                    Json::String(s) => Ok(s.clone().into_bytes()),
                    other => Err(bad(other)),
                })
                .collect::<Result<_, _>>()?,
        ),
        "BOOL" => Elements::Bool(
            flat.iter()
                .map(|j| j.as_bool().ok_or_else(|| bad(j)))
                .collect::<Result<_, _>>()?,
        ),
        "INT8" | "INT16" | "INT32" | "INT64" | "UINT8" | "UINT16" | "UINT32" | "UINT64" => {
            Elements::Int(
                flat.iter()
                    .map(|j| j.as_i64().ok_or_else(|| bad(j)))
                    .collect::<Result<_, _>>()?,
            )
        }
        "FP16" | "FP32" | "FP64" | "BF16" => Elements::Float(
            flat.iter()
                .map(|j| j.as_f64().ok_or_else(|| bad(j)))
                .collect::<Result<_, _>>()?,
        ),
        other => return Err(format!("unknown datatype `{other}`")),
    })
}

fn flatten<'a>(j: &'a Json, out: &mut Vec<&'a Json>) {
    match j {
        Json::Array(items) => items.iter().for_each(|x| flatten(x, out)),
        other => out.push(other),
    }
}

/// Elements as a flat JSON array.
pub fn to_json(data: &Elements) -> Json {
    match data {
        Elements::Bytes(v) => Json::Array(
            v.iter()
                .map(|b| Json::String(String::from_utf8_lossy(b).into_owned()))
                .collect(),
        ),
        Elements::Int(v) => Json::Array(v.iter().map(|&i| Json::from(i)).collect()),
        Elements::Float(v) => Json::Array(
            v.iter()
                .map(|&f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number))
                .collect(),
        ),
        Elements::Bool(v) => Json::Array(v.iter().map(|&b| Json::Bool(b)).collect()),
    }
}

/// Elements from the raw (binary) form: little-endian numbers, BYTES elements each after a
/// 4-byte little-endian length.
pub fn from_raw(datatype: &str, raw: &[u8]) -> Result<Elements, String> {
    fn chunks<const N: usize>(raw: &[u8], dt: &str) -> Result<Vec<[u8; N]>, String> {
        if raw.len() % N != 0 {
            return Err(format!(
                "{} raw bytes are not whole {dt} elements",
                raw.len()
            ));
        }
        Ok(raw
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                a
            })
            .collect())
    }
    Ok(match datatype {
        "BYTES" => {
            let mut out = Vec::new();
            let mut rest = raw;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err("a BYTES element's length is cut off".into());
                }
                let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if rest.len() < 4 + n {
                    return Err(format!("a BYTES element of {n} bytes is cut off"));
                }
                out.push(rest[4..4 + n].to_vec());
                rest = &rest[4 + n..];
            }
            Elements::Bytes(out)
        }
        "BOOL" => Elements::Bool(raw.iter().map(|&b| b != 0).collect()),
        "INT8" => Elements::Int(raw.iter().map(|&b| i64::from(b as i8)).collect()),
        "UINT8" => Elements::Int(raw.iter().map(|&b| i64::from(b)).collect()),
        "INT16" => Elements::Int(
            chunks::<2>(raw, datatype)?
                .into_iter()
                .map(|c| i64::from(i16::from_le_bytes(c)))
                .collect(),
        ),
        "UINT16" => Elements::Int(
            chunks::<2>(raw, datatype)?
                .into_iter()
                .map(|c| i64::from(u16::from_le_bytes(c)))
                .collect(),
        ),
        "INT32" => Elements::Int(
            chunks::<4>(raw, datatype)?
                .into_iter()
                .map(|c| i64::from(i32::from_le_bytes(c)))
                .collect(),
        ),
        "UINT32" => Elements::Int(
            chunks::<4>(raw, datatype)?
                .into_iter()
                .map(|c| i64::from(u32::from_le_bytes(c)))
                .collect(),
        ),
        "INT64" => Elements::Int(
            chunks::<8>(raw, datatype)?
                .into_iter()
                .map(i64::from_le_bytes)
                .collect(),
        ),
        "UINT64" => Elements::Int(
            chunks::<8>(raw, datatype)?
                .into_iter()
                .map(|c| u64::from_le_bytes(c) as i64)
                .collect(),
        ),
        "FP32" => Elements::Float(
            chunks::<4>(raw, datatype)?
                .into_iter()
                .map(|c| f64::from(f32::from_le_bytes(c)))
                .collect(),
        ),
        "FP64" => Elements::Float(
            chunks::<8>(raw, datatype)?
                .into_iter()
                .map(f64::from_le_bytes)
                .collect(),
        ),
        other => return Err(format!("raw {other} contents are not supported")),
    })
}

/// The raw (binary) form of elements of `datatype`.
pub fn to_raw(datatype: &str, data: &Elements) -> Vec<u8> {
    let mut out = Vec::new();
    match data {
        Elements::Bytes(v) => {
            for b in v {
                out.extend((b.len() as u32).to_le_bytes());
                out.extend(b);
            }
        }
        Elements::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Elements::Int(v) => {
            for &i in v {
                match datatype {
                    "INT32" => out.extend((i as i32).to_le_bytes()),
                    "UINT8" => out.push(i as u8),
                    _ => out.extend(i.to_le_bytes()),
                }
            }
        }
        Elements::Float(v) => {
            for &f in v {
                match datatype {
                    "FP32" => out.extend((f as f32).to_le_bytes()),
                    _ => out.extend(f.to_le_bytes()),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_bytes(_: &[u8], _: &DataType) -> Result<Value, String> {
        Err("no bytes here".into())
    }

    #[test]
    fn signatures_follow_the_mapping() {
        let t = |s: &str| signature(&s.parse::<DataType>().expect("a type"));
        assert_eq!(t("Text"), ("BYTES".into(), vec![-1]));
        assert_eq!(t("Int"), ("INT64".into(), vec![-1]));
        assert_eq!(t("Float"), ("FP64".into(), vec![-1]));
        assert_eq!(t("Bool"), ("BOOL".into(), vec![-1]));
        assert_eq!(t("List<Text>"), ("BYTES".into(), vec![-1, -1]));
        assert_eq!(t("Tensor<f32, [3, H]>"), ("FP32".into(), vec![-1, 3, -1]));
    }

    #[test]
    fn rows_split_and_join_again() {
        let t = Tensor {
            name: "x".into(),
            datatype: "INT32".into(),
            shape: vec![3, 1],
            data: from_raw("INT32", &to_raw("INT32", &Elements::Int(vec![1, -2, 3]))).expect("raw"),
        };
        let rows = to_rows(&t, &DataType::Int, &no_bytes).expect("rows");
        assert_eq!(rows, vec![Value::Int(1), Value::Int(-2), Value::Int(3)]);
        let back = from_rows("y", &DataType::Int, &rows, &|_| Err("x".into())).expect("joins");
        assert_eq!(
            (back.datatype.as_str(), back.shape.clone()),
            ("INT64", vec![3])
        );
        let texts = Tensor {
            name: "s".into(),
            datatype: "BYTES".into(),
            shape: vec![2],
            data: from_raw(
                "BYTES",
                &to_raw(
                    "BYTES",
                    &Elements::Bytes(vec![b"ab".to_vec(), b"".to_vec()]),
                ),
            )
            .expect("raw"),
        };
        assert_eq!(
            to_rows(&texts, &DataType::Text, &no_bytes).expect("rows"),
            vec![Value::Text("ab".into()), Value::Text(String::new())]
        );
        let lists = vec![
            Value::List(vec![Value::Text("a".into()), Value::Text("b".into())]),
            Value::List(vec![Value::Text("c".into()), Value::Text("d".into())]),
        ];
        let ty: DataType = "List<Text>".parse().expect("type");
        assert_eq!(
            from_rows("l", &ty, &lists, &|_| Err("x".into()))
                .expect("joins")
                .shape,
            vec![2, 2]
        );
    }

    #[test]
    fn bad_tensors_say_what_is_wrong() {
        let t = Tensor {
            name: "x".into(),
            datatype: "INT64".into(),
            shape: vec![2],
            data: Elements::Int(vec![1]),
        };
        assert!(rows_of(&t)
            .expect_err("short")
            .contains("holds 2 elements, but 1 were sent"));
        assert!(from_json("FP32", &serde_json::json!(["a"]))
            .expect_err("text")
            .contains("cannot hold"));
        assert!(from_raw("BYTES", &[9, 0, 0, 0, 1])
            .expect_err("cut")
            .contains("cut off"));
        let t = Tensor {
            name: "x".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            data: Elements::Bytes(vec![b"a".to_vec()]),
        };
        assert!(to_rows(&t, &DataType::Int, &no_bytes)
            .expect_err("type")
            .contains("cannot come from a BYTES"));
    }
}
