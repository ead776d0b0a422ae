//! The shapes an `onnx` node works with: the tensor types its `.mars` ports declare, the
//! graph's own input and output facts, the check of one against the other, and shape
//! buckets (SPEC §4.2, `onnx`).
//!
//! A declared port is a per-item type. When the graph's tensor has one axis more than the
//! port and that leading axis is not fixed to a size other than 1, the node batches: items
//! are stacked along it. Symbols in the declaration name sizes that vary per item; a symbol
//! that occurs both in an input and in an output port marks an output axis that follows
//! that input axis, so padding added for a bucket is cut off again.

use std::collections::BTreeMap;
use std::fmt;

/// One axis of a declared port: a fixed size or a symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclDim {
    Fixed(usize),
    Sym(String),
}

impl fmt::Display for DeclDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeclDim::Fixed(n) => write!(f, "{n}"),
            DeclDim::Sym(s) => write!(f, "{s}"),
        }
    }
}

/// A port's declared type, `Tensor<dtype, [dims]>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclTensor {
    pub dtype: String,
    pub dims: Vec<DeclDim>,
}

impl DeclTensor {
    /// Parse the plan's rendering of a tensor type (`Tensor<f32, [1, H, W]>`).
    pub fn parse(ty: &str) -> Result<DeclTensor, String> {
        let inner = ty
            .trim()
            .strip_prefix("Tensor<")
            .and_then(|s| s.strip_suffix('>'))
            .ok_or_else(|| format!("`{ty}` is not a tensor type"))?;
        let (dtype, rest) = inner
            .split_once(',')
            .ok_or_else(|| format!("tensor type `{ty}` has no shape"))?;
        let dims = rest
            .trim()
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .ok_or_else(|| format!("tensor type `{ty}` has no `[dims]`"))?;
        let dims = dims
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| match d.parse::<usize>() {
                Ok(n) => DeclDim::Fixed(n),
                Err(_) => DeclDim::Sym(d.to_string()),
            })
            .collect();
        Ok(DeclTensor {
            dtype: dtype.trim().to_string(),
            dims,
        })
    }
}

impl fmt::Display for DeclTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(ToString::to_string).collect();
        write!(f, "Tensor<{}, [{}]>", self.dtype, dims.join(", "))
    }
}

/// One axis of a graph tensor as the ONNX file states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphDim {
    Fixed(usize),
    /// A named or anonymous dynamic axis (`?` when unnamed).
    Dynamic(String),
}

/// A graph input or output: its name, element type (None: not stated) and shape (None: rank
/// not stated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphTensor {
    pub name: String,
    pub dtype: Option<String>,
    pub dims: Option<Vec<GraphDim>>,
}

impl fmt::Display for GraphTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = self.dtype.as_deref().unwrap_or("?");
        match &self.dims {
            None => write!(f, "{dt} [..]"),
            Some(d) => {
                let d: Vec<String> = d
                    .iter()
                    .map(|d| match d {
                        GraphDim::Fixed(n) => n.to_string(),
                        GraphDim::Dynamic(s) => s.clone(),
                    })
                    .collect();
                write!(f, "{dt} [{}]", d.join(", "))
            }
        }
    }
}

/// How a declared port lies on its graph tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The graph tensor has a leading batch axis the port does not declare.
    Batched,
    /// Port and graph tensor have the same rank: each item runs alone.
    Whole,
}

/// Check a declared port against a graph tensor; `what` names the port in errors
/// (`input port 0`). Returns how the port lies on the tensor.
pub fn check_port(what: &str, decl: &DeclTensor, graph: &GraphTensor) -> Result<Layout, String> {
    let mismatch = |why: String| {
        format!(
            "{what} is declared `{decl}`, but the ONNX graph's `{}` is {graph}: {why}",
            graph.name
        )
    };
    if decl.dtype != "f32" {
        return Err(mismatch(format!(
            "an onnx node's ports carry f32 tensors, not {}",
            decl.dtype
        )));
    }
    if let Some(dt) = &graph.dtype {
        if dt != "f32" {
            return Err(mismatch(format!("the graph's element type is {dt}")));
        }
    }
    let Some(gdims) = &graph.dims else {
        return Ok(Layout::Batched);
    };
    let layout = if gdims.len() == decl.dims.len() + 1 {
        match &gdims[0] {
            GraphDim::Fixed(n) if *n != 1 => {
                return Err(mismatch(format!(
                    "the graph's leading axis is fixed to {n}, so it is not a batch axis"
                )))
            }
            _ => Layout::Batched,
        }
    } else if gdims.len() == decl.dims.len() {
        Layout::Whole
    } else {
        return Err(mismatch(format!(
            "rank {} against the graph's {} (a port may leave out one leading batch axis)",
            decl.dims.len(),
            gdims.len()
        )));
    };
    let graph_axes = match layout {
        Layout::Batched => &gdims[1..],
        Layout::Whole => &gdims[..],
    };
    for (i, (d, g)) in decl.dims.iter().zip(graph_axes).enumerate() {
        if let (DeclDim::Fixed(a), GraphDim::Fixed(b)) = (d, g) {
            if a != b {
                return Err(mismatch(format!("axis {i} is {a}, the graph's is {b}")));
            }
        }
    }
    Ok(layout)
}

/// Shape buckets: for a symbol, the sizes its axis is padded up to (ascending). A size above
/// the largest bucket runs unpadded, at its own size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets(pub BTreeMap<String, Vec<usize>>);

impl Buckets {
    /// Parse `"W=160,320,640;H=640,960"`; the empty text has no buckets.
    pub fn parse(text: &str) -> Result<Buckets, String> {
        let mut out = BTreeMap::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (sym, sizes) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not `SYMBOL=size,size,…`"))?;
            let mut sizes = sizes
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("`{}` in `{part}` is not a positive size", s.trim()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            sizes.sort_unstable();
            sizes.dedup();
            if out.insert(sym.trim().to_string(), sizes).is_some() {
                return Err(format!("symbol `{}` has buckets twice", sym.trim()));
            }
        }
        Ok(Buckets(out))
    }

    /// The size an axis of symbol `sym` and size `n` runs at.
    pub fn size_for(&self, sym: &str, n: usize) -> usize {
        self.0
            .get(sym)
            .and_then(|sizes| sizes.iter().copied().find(|&b| b >= n))
            .unwrap_or(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, dims: &[Option<usize>]) -> GraphTensor {
        GraphTensor {
            name: name.into(),
            dtype: Some("f32".into()),
            dims: Some(
                dims.iter()
                    .map(|d| match d {
                        Some(n) => GraphDim::Fixed(*n),
                        None => GraphDim::Dynamic("?".into()),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn declared_types_parse_and_print() {
        let t = DeclTensor::parse("Tensor<f32, [3, H, W]>").expect("parses");
        assert_eq!(
            t.dims,
            vec![
                DeclDim::Fixed(3),
                DeclDim::Sym("H".into()),
                DeclDim::Sym("W".into())
            ]
        );
        assert_eq!(t.to_string(), "Tensor<f32, [3, H, W]>");
        assert!(DeclTensor::parse("Image").is_err());
    }

    #[test]
    fn ports_check_against_the_graph() {
        let det = g("x", &[None, Some(3), None, None]);
        let decl = DeclTensor::parse("Tensor<f32, [3, H, W]>").expect("parses");
        assert_eq!(check_port("input port 0", &decl, &det), Ok(Layout::Batched));
        let whole = DeclTensor::parse("Tensor<f32, [1, 3, H, W]>").expect("parses");
        assert_eq!(check_port("input port 0", &whole, &det), Ok(Layout::Whole));
        let bad = DeclTensor::parse("Tensor<f32, [1, H, W]>").expect("parses");
        let e = check_port("input port 0", &bad, &det).expect_err("3 channels");
        assert_eq!(
            e,
            "input port 0 is declared `Tensor<f32, [1, H, W]>`, but the ONNX graph's `x` is \
             f32 [?, 3, ?, ?]: axis 0 is 1, the graph's is 3"
        );
        let rank = DeclTensor::parse("Tensor<f32, [H, W]>").expect("parses");
        assert!(check_port("input port 0", &rank, &det)
            .expect_err("rank")
            .contains("rank 2 against the graph's 4"));
        let int = DeclTensor::parse("Tensor<i64, [3, H, W]>").expect("parses");
        assert!(check_port("input port 0", &int, &det).is_err());
        let fixed = g("x", &[Some(4), Some(3)]);
        let one = DeclTensor::parse("Tensor<f32, [3]>").expect("parses");
        assert!(check_port("input port 0", &one, &fixed)
            .expect_err("batch 4")
            .contains("not a batch axis"));
    }

    #[test]
    fn buckets_round_up_and_pass_large_sizes() {
        let b = Buckets::parse("W=320, 160 ,640; H=48").expect("parses");
        assert_eq!(b.size_for("W", 100), 160);
        assert_eq!(b.size_for("W", 160), 160);
        assert_eq!(b.size_for("W", 500), 640);
        assert_eq!(b.size_for("W", 700), 700);
        assert_eq!(b.size_for("X", 7), 7);
        assert!(Buckets::parse("W=0").is_err());
        assert!(Buckets::parse("W").is_err());
        assert!(Buckets::parse("W=1;W=2").is_err());
        assert_eq!(Buckets::parse("").expect("empty"), Buckets::default());
    }
}
