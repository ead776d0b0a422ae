//! The request decoder on any line, for pipelines of every input type: a value or an error
//! message, never a panic; a decoded value encodes (or says why not) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mars_runtime::codec::{self, EdgeContext};

const TYPES: [&str; 9] = [
    "Text",
    "Int",
    "Float",
    "Json",
    "Bytes",
    "Box",
    "List<List<Int>>",
    "Tensor<f32, [N, 2]>",
    "Tensor<f32, []>",
];

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let cx = EdgeContext::plain();
    for t in TYPES {
        let ty: mars_plan::DataType = t.parse().expect("a type");
        let field = json.get("x").unwrap_or(&json);
        if let Ok(v) = codec::decode(field, &ty, &cx) {
            let _ = codec::encode(&v, &cx);
        }
    }
});
