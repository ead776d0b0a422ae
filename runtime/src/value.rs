//! The runtime's data model: the values that travel on edges, and their JSON encoding
//! (language.md §6).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A decoded image: 8-bit RGB, row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageData {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

/// An axis-aligned box in pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoxData {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// A dense tensor; elements stored as f64 whatever the declared dtype (values are exact for
/// every dtype Mars declares except i64 beyond 2^53).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorData {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// One value on an edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Bytes(Arc<Vec<u8>>),
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Serialized as its JSON text, so that values cross processes with non-self-describing
    /// formats (timely's exchange uses bincode).
    Json(#[serde(with = "json_text")] serde_json::Value),
    Image(Arc<ImageData>),
    Box(BoxData),
    List(Vec<Value>),
    Tensor(Arc<TensorData>),
}

impl Value {
    /// A short name of the value's variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Bytes(_) => "Bytes",
            Value::Text(_) => "Text",
            Value::Int(_) => "Int",
            Value::Float(_) => "Float",
            Value::Bool(_) => "Bool",
            Value::Json(_) => "Json",
            Value::Image(_) => "Image",
            Value::Box(_) => "Box",
            Value::List(_) => "List",
            Value::Tensor(_) => "Tensor",
        }
    }

    pub fn as_text(&self) -> Result<&str, NodeError> {
        match self {
            Value::Text(s) => Ok(s),
            other => Err(NodeError::new(format!(
                "expected Text, got {}",
                other.kind()
            ))),
        }
    }

    /// Decode a request field of type `ty` (language.md §6); `$file` paths resolve against
    /// the current directory and `Image` needs a codec (see [`crate::codec`]).
    pub fn from_json(json: &serde_json::Value, ty: &mars_plan::DataType) -> Result<Value, String> {
        crate::codec::decode(json, ty, &crate::codec::EdgeContext::plain())
    }

    /// About how many bytes the value holds (its payload, not the allocator's overhead): what
    /// admission counts against the run's in-flight byte bound (SPEC 7.3). A shared buffer
    /// (`Bytes`, `Image`, `Tensor`) is counted whole.
    pub fn approx_bytes(&self) -> usize {
        const SCALAR: usize = std::mem::size_of::<Value>();
        match self {
            Value::Bytes(b) => SCALAR + b.len(),
            Value::Text(t) => SCALAR + t.len(),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Box(_) => SCALAR,
            Value::Json(j) => SCALAR + json_bytes(j),
            Value::Image(i) => SCALAR + i.rgb.len(),
            Value::List(items) => SCALAR + items.iter().map(Value::approx_bytes).sum::<usize>(),
            Value::Tensor(t) => SCALAR + 4 * t.data.len() + 8 * t.shape.len(),
        }
    }

    /// Encode as JSON (language.md §6); `Bytes` as `{"$base64": …}`.
    pub fn to_json(&self) -> Result<serde_json::Value, String> {
        crate::codec::encode(self, &crate::codec::EdgeContext::plain())
    }

    pub fn as_list(&self) -> Result<&[Value], NodeError> {
        match self {
            Value::List(l) => Ok(l),
            other => Err(NodeError::new(format!(
                "expected List, got {}",
                other.kind()
            ))),
        }
    }
}

/// Why one item failed inside a node. Becomes that request's error record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    pub message: String,
}

impl NodeError {
    pub fn new(message: impl Into<String>) -> NodeError {
        NodeError {
            message: message.into(),
        }
    }
}

mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// About how many bytes a JSON value holds (see [`Value::approx_bytes`]).
fn json_bytes(j: &serde_json::Value) -> usize {
    match j {
        serde_json::Value::String(s) => 24 + s.len(),
        serde_json::Value::Array(a) => 24 + a.iter().map(json_bytes).sum::<usize>(),
        serde_json::Value::Object(o) => {
            24 + o
                .iter()
                .map(|(k, v)| 24 + k.len() + json_bytes(v))
                .sum::<usize>()
        }
        _ => 16,
    }
}
