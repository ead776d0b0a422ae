//! `arch = "onnx"`: any ONNX file as a model node, on tract (pure Rust).
//!
//! The node loads the graph once, checks the ports its `.mars` block declares against the
//! graph's inputs and outputs ([`onnx_shapes::check_port`]), and then runs items through
//! optimized plans built for concrete shapes: tract optimizes a graph only for known sizes
//! (PP-OCR's detector fails with symbolic height and width), and building a plan costs
//! 0.15–2.5 s, so plans are cached, one per input shape, and shared by every replica and run
//! in the process ([`onnx_plans`](super::onnx_plans)). Variable sizes are padded up to the model block's shape
//! buckets so that items of different sizes share a plan and a batch; output axes that
//! follow a padded input axis (the same symbol in the `.mars` ports) are cut back to the
//! item's own size. Where the graph has a leading batch axis the ports leave out, the items
//! of a batch with the same bucketed shapes run as one tensor, in parts whose sizes are
//! powers of two ([`batch_parts`]), so that a node batching up to `max` items needs
//! log₂(max) + 1 plans per input shape.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use mars_runtime::{Item, Node, NodeContext, NodeError, Outputs, TensorData, Value};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::onnx_plans::{batch_parts, get_or_build, GraphKey};
use super::onnx_shapes::{check_port, Buckets, DeclDim, DeclTensor, GraphDim, GraphTensor, Layout};

/// A loaded ONNX graph: the inference model (plans are built from it), its inputs' and
/// outputs' facts as the file states them, and the file's `metadata_props`.
pub struct OnnxGraph {
    model: InferenceModel,
    /// What the shared plan cache knows this graph by.
    key: GraphKey,
    pub inputs: Vec<GraphTensor>,
    pub outputs: Vec<GraphTensor>,
    pub metadata: BTreeMap<String, String>,
}

fn graph_tensor(name: &str, fact: &InferenceFact) -> GraphTensor {
    let dtype = fact
        .datum_type
        .concretize()
        .map(|d| format!("{d:?}").to_lowercase());
    let dims = if fact.shape.is_open() {
        None
    } else {
        Some(
            fact.shape
                .dims()
                .map(
                    |d| match d.concretize().map(|d| d.to_i64().map(|v| v as usize)) {
                        Some(Ok(n)) => GraphDim::Fixed(n),
                        _ => GraphDim::Dynamic(
                            d.concretize()
                                .map_or_else(|| "?".to_string(), |d| d.to_string()),
                        ),
                    },
                )
                .collect(),
        )
    };
    GraphTensor {
        name: name.to_string(),
        dtype,
        dims,
    }
}

impl OnnxGraph {
    /// Read an ONNX file; errors name the file.
    pub fn load(path: &Path) -> Result<OnnxGraph, String> {
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| format!("cannot load ONNX model `{}`: {e:#}", path.display()))?;
        OnnxGraph::from_model(model, GraphKey::of_file(path))
    }

    /// From a parsed ONNX model (tests build small ones in memory).
    pub fn from_proto(proto: &tract_onnx::pb::ModelProto) -> Result<OnnxGraph, String> {
        let model = tract_onnx::onnx()
            .model_for_proto_model(proto)
            .map_err(|e| format!("cannot load ONNX model: {e:#}"))?;
        OnnxGraph::from_model(model, GraphKey::unique())
    }

    fn from_model(model: InferenceModel, key: GraphKey) -> Result<OnnxGraph, String> {
        let label = |o: OutletId| {
            model
                .outlet_label(o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        };
        let mut inputs = Vec::new();
        for (i, &o) in model.inputs.iter().enumerate() {
            let fact = model.input_fact(i).map_err(|e| e.to_string())?;
            inputs.push(graph_tensor(&label(o), fact));
        }
        let mut outputs = Vec::new();
        for (i, &o) in model.outputs.iter().enumerate() {
            let fact = model.output_fact(i).map_err(|e| e.to_string())?;
            outputs.push(graph_tensor(&label(o), fact));
        }
        let metadata = model
            .properties
            .iter()
            .filter_map(|(k, v)| {
                let k = k.strip_prefix("onnx.metadata_props.")?;
                let v = v
                    .try_as_plain_ram()
                    .ok()?
                    .to_scalar::<String>()
                    .ok()?
                    .clone();
                Some((k.to_string(), v))
            })
            .collect();
        Ok(OnnxGraph {
            model,
            key,
            inputs,
            outputs,
            metadata,
        })
    }

    /// An optimized plan for concrete input shapes.
    fn plan(&self, shapes: &[Vec<usize>]) -> TractResult<Arc<TypedRunnableModel>> {
        let mut m = self.model.clone();
        for (i, s) in shapes.iter().enumerate() {
            m.set_input_fact(
                i,
                InferenceFact::dt_shape(f32::datum_type(), s.iter().copied()),
            )?;
        }
        m.into_optimized()?.into_runnable()
    }
}

/// Only the `metadata_props` of an ONNX file, without building its graph.
pub fn onnx_metadata(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| format!("cannot read ONNX file `{}`: {e:#}", path.display()))?;
    Ok(proto
        .metadata_props
        .into_iter()
        .map(|p| (p.key, p.value))
        .collect())
}

/// A declared port and how it lies on its graph tensor.
struct Port {
    decl: DeclTensor,
    layout: Layout,
}

/// The `onnx` node. See the module documentation.
pub struct OnnxNode {
    id: String,
    graph: OnnxGraph,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    /// Every input is batched: items with the same bucketed shapes run as one tensor.
    batched: bool,
    buckets: Buckets,
    pad: f32,
    /// Plans this node built so far (others it found built; for tests and reports).
    pub plans_built: usize,
}

impl OnnxNode {
    /// Load the graph at `path` and check `in_types`/`out_types` (the plan node's declared
    /// port types) against it.
    pub fn new(
        id: &str,
        path: &Path,
        in_types: &[String],
        out_types: &[String],
        buckets: Buckets,
        pad: f32,
    ) -> Result<OnnxNode, String> {
        let graph = OnnxGraph::load(path)?;
        OnnxNode::with_graph(
            id,
            graph,
            &path.display().to_string(),
            in_types,
            out_types,
            buckets,
            pad,
        )
    }

    /// [`OnnxNode::new`] on a loaded graph; `file` names it in errors.
    pub fn with_graph(
        id: &str,
        graph: OnnxGraph,
        file: &str,
        in_types: &[String],
        out_types: &[String],
        buckets: Buckets,
        pad: f32,
    ) -> Result<OnnxNode, String> {
        let ports = |types: &[String], tensors: &[GraphTensor], dir: &str| {
            if types.len() != tensors.len() {
                let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
                return Err(format!(
                    "the model block declares {} {dir} port(s), but `{}` has {} ({})",
                    types.len(),
                    file,
                    tensors.len(),
                    names.join(", ")
                ));
            }
            types
                .iter()
                .zip(tensors)
                .enumerate()
                .map(|(i, (ty, g))| {
                    let decl = DeclTensor::parse(ty)
                        .map_err(|e| format!("{dir} port {i}: {e}; an onnx port is a Tensor"))?;
                    let layout = check_port(&format!("{dir} port {i}"), &decl, g)?;
                    Ok(Port { decl, layout })
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let inputs = ports(in_types, &graph.inputs, "in")?;
        let outputs = ports(out_types, &graph.outputs, "out")?;
        let batched = inputs.iter().all(|p| p.layout == Layout::Batched);
        if batched {
            if let Some(i) = outputs.iter().position(|p| p.layout != Layout::Batched) {
                return Err(format!(
                    "out port {i} is declared `{}` with the graph's batch axis, but the in ports \
                     leave that axis out; declare it without the leading axis",
                    outputs[i].decl
                ));
            }
        }
        for sym in buckets.0.keys() {
            let used = inputs
                .iter()
                .any(|p| p.decl.dims.contains(&DeclDim::Sym(sym.clone())));
            if !used {
                return Err(format!(
                    "`buckets` names `{sym}`, which no in port's type uses"
                ));
            }
        }
        Ok(OnnxNode {
            id: id.to_string(),
            graph,
            inputs,
            outputs,
            batched,
            buckets,
            pad,
            plans_built: 0,
        })
    }

    /// Build the node from a plan node: config keys `weights`, `buckets`, `pad`.
    pub fn from_ctx(ctx: &NodeContext) -> Result<OnnxNode, NodeError> {
        let fail = |m: String| NodeError::new(format!("node `{}`: {m}", ctx.node.id));
        let model = ctx
            .node
            .implementation
            .model
            .as_ref()
            .ok_or_else(|| fail("is not a model".into()))?;
        let text = |k: &str| match model.config.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(fail(format!("model key `{k}` must be text, got `{v}`"))),
        };
        match text("quantize")?.as_deref() {
            None | Some("none") => {}
            Some(q) => {
                return Err(fail(format!(
                    "model key `quantize` is `{q}`, but onnx models run as the file stores them; \
                     set `quantize = none`"
                )))
            }
        }
        let buckets = Buckets::parse(&text("buckets")?.unwrap_or_default())
            .map_err(|e| fail(format!("model key `buckets`: {e}")))?;
        let pad = match model.config.get("pad") {
            None | Some(serde_json::Value::Null) => 0.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| fail(format!("model key `pad` must be a number, got `{v}`")))?
                as f32,
        };
        let path = super::weights_path(ctx)?;
        OnnxNode::new(
            &ctx.node.id,
            &path,
            &ctx.node.in_types,
            &ctx.node.out_types,
            buckets,
            pad,
        )
        .map_err(fail)
    }

    /// The graph's metadata (`metadata_props`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.graph.metadata
    }

    /// An item's input tensors, checked against the declared ports, with the sizes its
    /// symbols take.
    fn item_inputs<'a>(
        &self,
        item: &'a Item,
    ) -> Result<(Vec<&'a TensorData>, BTreeMap<String, usize>), NodeError> {
        let mut syms: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::with_capacity(self.inputs.len());
        for (i, port) in self.inputs.iter().enumerate() {
            let t = match item.get(i) {
                Some(Value::Tensor(t)) => t.as_ref(),
                Some(v) => {
                    return Err(NodeError::new(format!(
                        "in port {i}: expected {}, got {}",
                        port.decl,
                        v.kind()
                    )))
                }
                None => return Err(NodeError::new(format!("in port {i}: missing"))),
            };
            let bad = |why: String| {
                NodeError::new(format!(
                    "in port {i}: a tensor of shape {:?} for `{}`: {why}",
                    t.shape, port.decl
                ))
            };
            if t.shape.len() != port.decl.dims.len() {
                return Err(bad("wrong rank".into()));
            }
            if t.data.len() != t.shape.iter().product::<usize>() {
                return Err(bad(format!("it holds {} values", t.data.len())));
            }
            for (axis, (&n, d)) in t.shape.iter().zip(&port.decl.dims).enumerate() {
                match d {
                    DeclDim::Fixed(m) if *m != n => {
                        return Err(bad(format!("axis {axis} must be {m}")))
                    }
                    DeclDim::Fixed(_) => {}
                    DeclDim::Sym(s) => {
                        if n == 0 {
                            return Err(bad(format!("axis {axis} is empty")));
                        }
                        if let Some(&prev) = syms.get(s) {
                            if prev != n {
                                return Err(bad(format!(
                                    "`{s}` is {n} here but {prev} in an earlier port"
                                )));
                            }
                        }
                        syms.insert(s.clone(), n);
                    }
                }
            }
            out.push(t);
        }
        Ok((out, syms))
    }

    /// The per-item shapes an item runs at (its sizes padded up to the buckets).
    fn bucketed(&self, tensors: &[&TensorData]) -> Vec<Vec<usize>> {
        self.inputs
            .iter()
            .zip(tensors)
            .map(|(port, t)| {
                port.decl
                    .dims
                    .iter()
                    .zip(&t.shape)
                    .map(|(d, &n)| match d {
                        DeclDim::Sym(s) => self.buckets.size_for(s, n),
                        DeclDim::Fixed(_) => n,
                    })
                    .collect()
            })
            .collect()
    }

    fn cached_plan(&mut self, shapes: Vec<Vec<usize>>) -> Result<Arc<TypedRunnableModel>, String> {
        let graph = &self.graph;
        let (plan, built) = get_or_build(&graph.key, &shapes, || graph.plan(&shapes))
            .map_err(|e| format!("cannot build a plan for input shapes {shapes:?}: {e:#}"))?;
        if built {
            self.plans_built += 1;
        }
        Ok(plan)
    }

    /// Run a group of items that share bucketed shapes as one batch.
    fn run_group(
        &mut self,
        shapes: &[Vec<usize>],
        items: &[(Vec<&TensorData>, BTreeMap<String, usize>)],
    ) -> Result<Vec<Outputs>, String> {
        let n = items.len();
        let mut graph_shapes = Vec::with_capacity(shapes.len());
        let mut tensors: TVec<TValue> = TVec::new();
        for (p, shape) in shapes.iter().enumerate() {
            let mut full = Vec::with_capacity(shape.len() + 1);
            if self.batched {
                full.push(n);
            } else if self.inputs[p].layout == Layout::Batched {
                full.push(1);
            }
            full.extend_from_slice(shape);
            let per: usize = shape.iter().product();
            let mut data = vec![self.pad; per * n];
            for (k, (ins, _)) in items.iter().enumerate() {
                paste(&mut data[k * per..(k + 1) * per], shape, ins[p]);
            }
            let t = Tensor::from_shape(&full, &data).map_err(|e| e.to_string())?;
            tensors.push(t.into_tvalue());
            graph_shapes.push(full);
        }
        let plan = self.cached_plan(graph_shapes)?;
        let results = plan.run(tensors).map_err(|e| format!("{e:#}"))?;
        let mut outs: Vec<Outputs> = vec![Vec::with_capacity(self.outputs.len()); n];
        for (o, (port, value)) in self.outputs.iter().zip(results.iter()).enumerate() {
            let view = value
                .to_plain_array_view::<f32>()
                .map_err(|e| format!("out port {o}: {e}"))?;
            let shape = view.shape().to_vec();
            let data: Vec<f32> = view.iter().copied().collect();
            let (rows, row_shape) = match port.layout {
                Layout::Batched => match shape.split_first() {
                    Some((&b, rest)) => (b, rest.to_vec()),
                    None => return Err(format!("out port {o}: the graph gave a scalar")),
                },
                Layout::Whole => (1, shape.clone()),
            };
            if rows != n && !(rows == 1 && !self.batched) {
                return Err(format!(
                    "out port {o}: the graph gave {rows} rows for {n} items"
                ));
            }
            if row_shape.len() != port.decl.dims.len() {
                return Err(format!(
                    "out port {o} is declared `{}`, but the graph gave shape {shape:?}",
                    port.decl
                ));
            }
            let per: usize = row_shape.iter().product();
            for (k, (_, syms)) in items.iter().enumerate() {
                let mut want = Vec::with_capacity(row_shape.len());
                for (axis, (d, &got)) in port.decl.dims.iter().zip(&row_shape).enumerate() {
                    match d {
                        DeclDim::Fixed(m) if *m != got => {
                            return Err(format!(
                                "out port {o} is declared `{}`, but axis {axis} of the graph's \
                                 output is {got}",
                                port.decl
                            ))
                        }
                        DeclDim::Sym(s) => want.push(syms.get(s).copied().unwrap_or(got).min(got)),
                        DeclDim::Fixed(_) => want.push(got),
                    }
                }
                let row = &data[k.min(rows - 1) * per..(k.min(rows - 1) + 1) * per];
                let cut = cut(row, &row_shape, &want);
                outs[k].push(Value::Tensor(Arc::new(TensorData {
                    dtype: "f32".into(),
                    shape: want,
                    data: cut,
                })));
            }
        }
        Ok(outs)
    }
}

/// Copy tensor `t` into the top-left corner of `dst` (row-major, of shape `shape`, each axis
/// at least `t`'s).
fn paste(dst: &mut [f32], shape: &[usize], t: &TensorData) {
    if t.shape == shape {
        dst.copy_from_slice(&t.data);
        return;
    }
    let rank = shape.len();
    let last = t.shape[rank - 1];
    let rows = t.data.len() / last.max(1);
    for r in 0..rows {
        // Index of row `r` in `t`, then in `dst`.
        let mut rem = r;
        let mut off = 0;
        let mut stride = shape[rank - 1];
        for a in (0..rank - 1).rev() {
            let i = rem % t.shape[a];
            rem /= t.shape[a];
            off += i * stride;
            stride *= shape[a];
        }
        dst[off..off + last].copy_from_slice(&t.data[r * last..(r + 1) * last]);
    }
}

/// The top-left `want` corner of a row-major tensor of shape `shape`.
fn cut(data: &[f32], shape: &[usize], want: &[usize]) -> Vec<f32> {
    if want == shape {
        return data.to_vec();
    }
    let rank = shape.len();
    let last = want[rank - 1];
    let rows: usize = want[..rank - 1].iter().product();
    let mut out = Vec::with_capacity(rows * last);
    for r in 0..rows {
        let mut rem = r;
        let mut off = 0;
        let mut stride = shape[rank - 1];
        for a in (0..rank - 1).rev() {
            let i = rem % want[a];
            rem /= want[a];
            off += i * stride;
            stride *= shape[a];
        }
        out.extend_from_slice(&data[off..off + last]);
    }
    out
}

impl Node for OnnxNode {
    fn run_batch(&mut self, batch: Vec<Item>) -> Vec<Result<Outputs, NodeError>> {
        let mut results: Vec<Option<Result<Outputs, NodeError>>> =
            (0..batch.len()).map(|_| None).collect();
        // Items grouped by their bucketed shapes, in first-seen order.
        let mut groups: Vec<(Vec<Vec<usize>>, Vec<usize>)> = Vec::new();
        let mut parsed = Vec::with_capacity(batch.len());
        for (k, item) in batch.iter().enumerate() {
            match self.item_inputs(item) {
                Ok(p) => {
                    let shapes = self.bucketed(&p.0);
                    match groups.iter_mut().find(|(s, _)| *s == shapes) {
                        Some((_, ks)) if self.batched => ks.push(k),
                        _ => groups.push((shapes, vec![k])),
                    }
                    parsed.push(Some(p));
                }
                Err(e) => {
                    results[k] = Some(Err(e));
                    parsed.push(None);
                }
            }
        }
        // A batched group runs in parts of power-of-two sizes (fewer plans to build).
        let groups = groups.into_iter().flat_map(|(shapes, ks)| {
            let mut at = 0;
            batch_parts(ks.len())
                .into_iter()
                .map(|n| {
                    at += n;
                    (shapes.clone(), ks[at - n..at].to_vec())
                })
                .collect::<Vec<_>>()
        });
        for (shapes, ks) in groups {
            let items: Vec<_> = ks
                .iter()
                .map(|&k| parsed[k].take().expect("grouped items parsed"))
                .collect();
            match self.run_group(&shapes, &items) {
                Ok(outs) => {
                    for (&k, o) in ks.iter().zip(outs) {
                        results[k] = Some(Ok(o));
                    }
                }
                Err(e) => {
                    let e = format!("node `{}`: onnx run failed: {e}", self.id);
                    for &k in &ks {
                        results[k] = Some(Err(NodeError::new(e.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(NodeError::new("item was not run"))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb;

    fn value_info(name: &str, dims: &[Result<i64, &str>]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value as D, Dimension};
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1, // FLOAT
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| Dimension {
                                denotation: String::new(),
                                value: Some(match d {
                                    Ok(n) => D::DimValue(*n),
                                    Err(s) => D::DimParam(s.to_string()),
                                }),
                            })
                            .collect(),
                    }),
                })),
            }),
            ..Default::default()
        }
    }

    /// `y = x * 2 + 1` over `x: [N, 2, W]`, with metadata `character = "a\nb"`.
    fn affine() -> OnnxGraph {
        let scalar = |name: &str, v: f32| pb::TensorProto {
            name: name.into(),
            data_type: 1,
            float_data: vec![v],
            ..Default::default()
        };
        let node = |op: &str, ins: &[&str], out: &str| pb::NodeProto {
            op_type: op.into(),
            name: out.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            ..Default::default()
        };
        let graph = pb::GraphProto {
            name: "affine".into(),
            node: vec![
                node("Mul", &["x", "two"], "x2"),
                node("Add", &["x2", "one"], "y"),
            ],
            initializer: vec![scalar("two", 2.0), scalar("one", 1.0)],
            input: vec![value_info("x", &[Err("N"), Ok(2), Err("W")])],
            output: vec![value_info("y", &[Err("N"), Ok(2), Err("W")])],
            ..Default::default()
        };
        let proto = pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(graph),
            metadata_props: vec![pb::StringStringEntryProto {
                key: "character".into(),
                value: "a\nb".into(),
            }],
            ..Default::default()
        };
        OnnxGraph::from_proto(&proto).expect("the test graph loads")
    }

    /// The affine graph under a cache key of the test's choosing (as if from one file).
    fn affine_as(key: GraphKey) -> OnnxGraph {
        let mut g = affine();
        g.key = key;
        g
    }

    fn tensor(shape: &[usize], start: f32) -> Value {
        let n: usize = shape.iter().product();
        Value::Tensor(Arc::new(TensorData {
            dtype: "f32".into(),
            shape: shape.to_vec(),
            data: (0..n).map(|i| start + i as f32).collect(),
        }))
    }

    fn node(inp: &str, out: &str, buckets: &str) -> Result<OnnxNode, String> {
        OnnxNode::with_graph(
            "n",
            affine(),
            "affine.onnx",
            &[inp.to_string()],
            &[out.to_string()],
            Buckets::parse(buckets).expect("buckets"),
            -7.0,
        )
    }

    #[test]
    fn the_graph_is_described_from_the_file() {
        let g = affine();
        assert_eq!(g.inputs[0].to_string(), "f32 [N, 2, W]");
        assert_eq!(
            g.metadata.get("character").map(String::as_str),
            Some("a\nb")
        );
    }

    #[test]
    fn items_of_different_widths_share_a_bucket_and_a_run() {
        let mut n = node("Tensor<f32, [2, W]>", "Tensor<f32, [2, W]>", "W=4,8").expect("loads");
        let out = n.run_batch(vec![
            vec![tensor(&[2, 3], 0.0)],
            vec![tensor(&[2, 4], 10.0)],
            vec![tensor(&[2, 6], 0.0)],
            vec![tensor(&[3, 3], 0.0)],
        ]);
        // Widths 3 and 4 run as one [2, 2, 4] batch, 6 as [1, 2, 8]: two plans.
        assert_eq!(n.plans_built, 2);
        let t = |r: &Result<Outputs, NodeError>| match r.as_ref().expect("ok").first() {
            Some(Value::Tensor(t)) => (**t).clone(),
            other => panic!("{other:?}"),
        };
        let a = t(&out[0]);
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
        let b = t(&out[1]);
        assert_eq!(b.data[0], 21.0);
        assert_eq!(t(&out[2]).shape, vec![2, 6]);
        let e = out[3].as_ref().expect_err("3 rows");
        assert!(e.message.contains("axis 0 must be 2"), "{}", e.message);
        // The same shapes again: no new plan; one item alone is another batch size.
        let again = n.run_batch(vec![vec![tensor(&[2, 2], 0.0)], vec![tensor(&[2, 1], 0.0)]]);
        assert!(again.iter().all(Result::is_ok));
        assert_eq!(n.plans_built, 2);
        n.run_batch(vec![vec![tensor(&[2, 2], 0.0)]]);
        assert_eq!(n.plans_built, 3);
    }

    #[test]
    fn a_batch_runs_in_power_of_two_parts_and_replicas_share_plans() {
        let key = GraphKey::unique();
        let replica = || {
            OnnxNode::with_graph(
                "n",
                affine_as(key.clone()),
                "affine.onnx",
                &["Tensor<f32, [2, W]>".to_string()],
                &["Tensor<f32, [2, W]>".to_string()],
                Buckets::parse("W=4").expect("buckets"),
                0.0,
            )
            .expect("loads")
        };
        let mut a = replica();
        // Seven items of one bucket run as 4 + 2 + 1: three plans; every result is right.
        let out = a.run_batch((0..7).map(|i| vec![tensor(&[2, 4], i as f32)]).collect());
        assert_eq!(a.plans_built, 3);
        for (i, r) in out.iter().enumerate() {
            match r.as_ref().expect("ok").first() {
                Some(Value::Tensor(t)) => assert_eq!(t.data[0], 2.0 * i as f32 + 1.0),
                other => panic!("{other:?}"),
            }
        }
        // Six (4 + 2) and five (4 + 1) need no new plan, on this replica or another one.
        a.run_batch((0..6).map(|_| vec![tensor(&[2, 4], 0.0)]).collect());
        assert_eq!(a.plans_built, 3);
        let mut b = replica();
        let out = b.run_batch((0..5).map(|_| vec![tensor(&[2, 4], 0.0)]).collect());
        assert!(out.iter().all(Result::is_ok));
        assert_eq!(b.plans_built, 0);
    }

    #[test]
    fn a_port_that_does_not_match_names_port_and_types() {
        let e = node("Tensor<f32, [3, W]>", "Tensor<f32, [2, W]>", "")
            .err()
            .expect("mismatch");
        assert_eq!(
            e,
            "in port 0 is declared `Tensor<f32, [3, W]>`, but the ONNX graph's `x` is f32 \
             [N, 2, W]: axis 0 is 3, the graph's is 2"
        );
        // The graph states no output shapes tract keeps: a wrong output rank shows at run time.
        let mut n = node("Tensor<f32, [2, W]>", "Tensor<f32, [1, 2, W]>", "").expect("loads");
        let r = n.run_batch(vec![vec![tensor(&[2, 2], 0.0)]]);
        let e = &r[0].as_ref().expect_err("rank").message;
        assert!(
            e.contains("out port 0 is declared `Tensor<f32, [1, 2, W]>`"),
            "{e}"
        );
        let e = node("Tensor<f32, [2, W]>", "Tensor<f32, [2, W]>", "H=4")
            .err()
            .expect("unknown bucket symbol");
        assert!(e.contains("`H`"), "{e}");
    }

    #[test]
    fn paste_and_cut_are_inverse_on_the_corner() {
        let t = TensorData {
            dtype: "f32".into(),
            shape: vec![2, 2, 3],
            data: (0..12).map(|v| v as f32).collect(),
        };
        let shape = [2, 3, 4];
        let mut dst = vec![-1.0; 24];
        paste(&mut dst, &shape, &t);
        assert_eq!(&dst[0..4], &[0.0, 1.0, 2.0, -1.0]);
        assert_eq!(&dst[4..8], &[3.0, 4.0, 5.0, -1.0]);
        assert_eq!(&dst[8..12], &[-1.0; 4]);
        assert_eq!(&dst[12..16], &[6.0, 7.0, 8.0, -1.0]);
        assert_eq!(cut(&dst, &shape, &[2, 2, 3]), t.data);
    }
}
