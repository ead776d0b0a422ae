//! One pipeline: statements in dependency order, each call a node of the DAG, each data
//! dependency an edge, types checked on every edge.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::stable_graph::{NodeIndex, StableDiGraph};

use super::annotations::{check_annotations, check_slo};
use super::decls::{ConstScope, Entity, Env, Scope, Sig, StaticType};
use super::types::{compatible, lower_type, Subst};
use super::Sink;
use crate::diagnostics::{did_you_mean, Problem};
use crate::ir::{self, DataType, Literal, Source};
use crate::syntax::ast::{self, Span};

/// A value flowing into an argument: where it comes from and its type (`None` where an
/// error was already reported).
#[derive(Debug, Clone)]
struct Val {
    source: Source,
    ty: Option<DataType>,
}

#[derive(Debug, Clone, Copy)]
enum Local {
    Input(usize),
    /// Statement index and position in its `let (a, b)`.
    Binding(usize, usize),
    Output,
}

struct Checker<'a, 's> {
    env: &'a Env,
    scope: &'a Scope,
    sink: &'a mut Sink<'s>,
    graph: StableDiGraph<ir::Node, ir::Edge>,
    locals: BTreeMap<String, (Local, Span)>,
    inputs: Vec<ir::Input>,
    /// The values each statement produced (`None`: not yet, or failed).
    values: Vec<Option<Vec<Val>>>,
    used: BTreeSet<String>,
    /// Outputs assigned so far, where (even by a statement with errors).
    assigned: BTreeMap<String, Span>,
    suggestions_left: usize,
}

/// How many unknown names of a pipeline get a did-you-mean.
const SUGGESTION_BUDGET: usize = 200;

/// Ids of the nodes of one statement: the outermost call takes the statement's name, nested
/// calls `name.kind`, with `_2`, `_3`, … where a kind repeats.
struct Ids {
    base: String,
    used: BTreeSet<String>,
    top_taken: bool,
}

impl Ids {
    fn next(&mut self, kind: &str) -> String {
        if !self.top_taken {
            self.top_taken = true;
            return self.base.clone();
        }
        let first = format!("{}.{}", self.base, kind);
        let mut id = first.clone();
        let mut n = 2;
        while self.used.contains(&id) {
            id = format!("{first}_{n}");
            n += 1;
        }
        self.used.insert(id.clone());
        id
    }
}

pub(crate) fn check_pipeline(
    env: &Env,
    scope: &Scope,
    p: &ast::PipelineItem,
    sink: &mut Sink,
) -> ir::Pipeline {
    let mut c = Checker {
        env,
        scope,
        sink,
        graph: StableDiGraph::new(),
        locals: BTreeMap::new(),
        inputs: Vec::new(),
        values: vec![None; p.body.len()],
        used: BTreeSet::new(),
        assigned: BTreeMap::new(),
        suggestions_left: SUGGESTION_BUDGET,
    };
    c.declare_inputs(p);
    c.declare_outputs(p);
    c.declare_bindings(p);
    let order = c.order_statements(p);
    let mut outputs: BTreeMap<String, (Span, ir::Output)> = BTreeMap::new();
    for i in order {
        c.check_statement(p, i, &mut outputs);
    }
    let mut slos: Vec<ir::Slo> = Vec::new();
    let mut slo_spans: BTreeMap<String, Span> = BTreeMap::new();
    for s in &p.body {
        if let ast::Stmt::Slo {
            metric,
            op,
            value,
            span,
        } = s
        {
            if let Some(slo) = check_slo(metric, *op, value, *span, c.sink) {
                let key = metric.text();
                if let Some(first) = slo_spans.insert(key.clone(), *span) {
                    c.sink.push(
                        Problem::error(
                            "mars::slo::duplicate",
                            format!("two objectives for `{key}`"),
                        )
                        .label(*span, "given again here")
                        .label(first, "first given here")
                        .help("keep one"),
                    );
                }
                slos.push(slo);
            }
        }
    }
    let mut out_list = Vec::new();
    for o in &p.outputs {
        if let Some((_, out)) = outputs.remove(&o.name.name) {
            out_list.push(out);
        }
        match c.assigned.get(&o.name.name) {
            Some(_) => {}
            None => c.sink.push(
                Problem::error(
                    "mars::pipeline::output_missing",
                    format!("the output `{}` is never assigned", o.name.name),
                )
                .label(o.name.span, "declared here")
                .label(p.end, "but not assigned before the end of the pipeline")
                .help(format!("assign it: `{} = …`", o.name.name)),
            ),
        }
    }
    c.report_unused(p);
    if c.graph.node_count() > mars_plan::limits::MAX_NODES {
        c.sink.push(
            Problem::error(
                "mars::pipeline::too_many_nodes",
                format!(
                    "the pipeline has {} nodes; at most {} (SPEC 7.1)",
                    c.graph.node_count(),
                    mars_plan::limits::MAX_NODES
                ),
            )
            .label(p.name.span, "this pipeline")
            .help("split it into pipelines, or map one node over a list"),
        );
    }
    ir::Pipeline {
        name: p.name.name.clone(),
        span: p.name.span.into(),
        inputs: c.inputs,
        outputs: out_list,
        graph: c.graph,
        slos,
    }
}

fn scalar_static_type(t: &DataType) -> Option<StaticType> {
    Some(match t {
        DataType::Int => StaticType::Int,
        DataType::Float => StaticType::Float,
        DataType::Text => StaticType::Text,
        DataType::Bool => StaticType::Bool,
        _ => return None,
    })
}

fn literal_type(l: &Literal) -> Option<DataType> {
    match l {
        Literal::Int(_) => Some(DataType::Int),
        Literal::Float(_) => Some(DataType::Float),
        Literal::Text(_) => Some(DataType::Text),
        Literal::Bool(_) => Some(DataType::Bool),
        Literal::Duration(_) | Literal::Symbol(_) => None,
    }
}

/// A data literal (durations and rates are not data).
fn data_literal(lit: &ast::Lit) -> Option<Literal> {
    match &lit.kind {
        ast::LitKind::Int(i) => Some(Literal::Int(*i)),
        ast::LitKind::Float(f) if f.is_finite() => Some(Literal::Float(*f)),
        ast::LitKind::Text(s) => Some(Literal::Text(s.clone())),
        ast::LitKind::Bool(b) => Some(Literal::Bool(*b)),
        _ => None,
    }
}

/// The bindings an expression reads (single names only; paths name items).
fn names_read<'e>(e: &'e ast::Expr, out: &mut Vec<&'e ast::Ident>) {
    match e {
        ast::Expr::Name(p) => {
            if let Some(i) = p.single() {
                out.push(i);
            }
        }
        ast::Expr::Lit(_) => {}
        ast::Expr::Call(c) => {
            let is_map = c.callee.single().is_some_and(|i| i.name == "map");
            for (n, a) in c.args.iter().enumerate() {
                match a {
                    // The first argument of `map` names a node kind, not a value.
                    ast::Arg::Positional(ast::Expr::Name(_)) if is_map && n == 0 => {}
                    ast::Arg::Positional(e) | ast::Arg::Named { value: e, .. } => {
                        names_read(e, out)
                    }
                }
            }
        }
    }
}

impl Checker<'_, '_> {
    fn consts(&self) -> ConstScope<'_> {
        ConstScope {
            env: self.env,
            module: self.env.user,
            scope: Some(self.scope),
        }
    }

    fn declare(&mut self, ident: &ast::Ident, local: Local) -> bool {
        if let Some((_, first)) = self.locals.get(&ident.name) {
            self.sink.push(
                Problem::error(
                    "mars::resolve::duplicate_binding",
                    format!("`{}` is defined twice in this pipeline", ident.name),
                )
                .label(ident.span, "defined again here")
                .label(*first, "first defined here")
                .help("inputs, outputs and bindings of a pipeline share one namespace: rename one"),
            );
            return false;
        }
        self.locals.insert(ident.name.clone(), (local, ident.span));
        true
    }

    fn declare_inputs(&mut self, p: &ast::PipelineItem) {
        for input in &p.inputs {
            let mut problems = Vec::new();
            let ty = lower_type(&input.ty, &[], &mut problems);
            self.sink.extend(problems);
            let default = match (&input.default, &ty) {
                (Some(v), Some(t)) => match scalar_static_type(t) {
                    None => {
                        self.sink.push(
                            Problem::error(
                                "mars::pipeline::bad_default",
                                format!("an input of type `{t}` cannot have a default"),
                            )
                            .label(
                                v.span(),
                                "only Int, Float, Text and Bool inputs take defaults",
                            ),
                        );
                        None
                    }
                    Some(st) => {
                        match self.consts().static_value(
                            v,
                            &st,
                            "mars::type::mismatch",
                            &format!("the input `{}`", input.name.name),
                        ) {
                            Ok(l) => Some(l),
                            Err(e) => {
                                self.sink.push(e);
                                None
                            }
                        }
                    }
                },
                _ => None,
            };
            if self.declare(&input.name, Local::Input(self.inputs.len())) {
                self.inputs.push(ir::Input {
                    name: input.name.name.clone(),
                    // A broken type was reported; `Json` keeps the IR whole meanwhile.
                    ty: ty.unwrap_or(DataType::Json),
                    default,
                    span: input.span.into(),
                });
            }
        }
    }

    fn declare_outputs(&mut self, p: &ast::PipelineItem) {
        for o in &p.outputs {
            let mut problems = Vec::new();
            lower_type(&o.ty, &[], &mut problems);
            self.sink.extend(problems);
            self.declare(&o.name, Local::Output);
        }
    }

    fn declare_bindings(&mut self, p: &ast::PipelineItem) {
        for (i, s) in p.body.iter().enumerate() {
            if let ast::Stmt::Let { targets, .. } = s {
                for (k, name) in targets.names().iter().enumerate() {
                    self.declare(name, Local::Binding(i, k));
                }
            }
        }
    }

    /// Statements in dependency order (ties in source order); statements in a cycle are
    /// reported and left out.
    fn order_statements(&mut self, p: &ast::PipelineItem) -> Vec<usize> {
        let n = p.body.len();
        let mut deps: Vec<Vec<(usize, Span)>> = vec![Vec::new(); n];
        for (i, s) in p.body.iter().enumerate() {
            let expr = match s {
                ast::Stmt::Let { expr, .. } | ast::Stmt::Output { expr, .. } => expr,
                ast::Stmt::Slo { .. } => continue,
            };
            let mut read = Vec::new();
            names_read(expr, &mut read);
            for ident in read {
                if let Some((Local::Binding(stmt, _), _)) = self.locals.get(&ident.name) {
                    // Read is read, even by a statement that a cycle keeps from checking.
                    self.used.insert(ident.name.clone());
                    deps[i].push((*stmt, ident.span));
                }
            }
        }
        let mut indegree: Vec<usize> = deps
            .iter()
            .map(|d| d.iter().map(|(s, _)| *s).collect::<BTreeSet<_>>().len())
            .collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, d) in deps.iter().enumerate() {
            for s in d.iter().map(|(s, _)| *s).collect::<BTreeSet<_>>() {
                dependents[s].push(i);
            }
        }
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &d in &dependents[i] {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    ready.insert(d);
                }
            }
        }
        if order.len() < n {
            let done: BTreeSet<usize> = order.iter().copied().collect();
            self.report_cycles(p, &deps, &done);
        }
        order
    }

    fn report_cycles(
        &mut self,
        p: &ast::PipelineItem,
        deps: &[Vec<(usize, Span)>],
        done: &BTreeSet<usize>,
    ) {
        let mut handled: BTreeSet<usize> = BTreeSet::new();
        for start in 0..p.body.len() {
            if done.contains(&start) || handled.contains(&start) {
                continue;
            }
            let mut path: Vec<usize> = Vec::new();
            let mut pos: BTreeMap<usize, usize> = BTreeMap::new();
            let mut cur = start;
            let cycle = loop {
                if let Some(&at) = pos.get(&cur) {
                    break Some(path[at..].to_vec());
                }
                if handled.contains(&cur) {
                    break None;
                }
                pos.insert(cur, path.len());
                path.push(cur);
                match deps[cur]
                    .iter()
                    .map(|(s, _)| *s)
                    .filter(|s| !done.contains(s))
                    .min()
                {
                    Some(next) => cur = next,
                    None => break None,
                }
            };
            handled.extend(path.iter().copied());
            let Some(cycle) = cycle else { continue };
            let name_of = |i: usize| -> &ast::Ident {
                match &p.body[i] {
                    ast::Stmt::Let { targets, .. } => &targets.names()[0],
                    ast::Stmt::Output { name, .. } => name,
                    ast::Stmt::Slo { .. } => unreachable!("an slo depends on nothing"),
                }
            };
            let names: Vec<String> = cycle
                .iter()
                .map(|&i| format!("`{}`", name_of(i).name))
                .collect();
            // A long cycle is shown by its first steps: the message and labels stay readable
            // (and rendering each label costs a scan of the file).
            const SHOWN: usize = 8;
            let message = if cycle.len() == 1 {
                format!("{} depends on itself", names[0])
            } else if cycle.len() <= SHOWN {
                format!("a cycle: {} → {}", names.join(" → "), names[0])
            } else {
                format!(
                    "a cycle of {} bindings: {} → … → {}",
                    cycle.len(),
                    names[..SHOWN].join(" → "),
                    names[0]
                )
            };
            let mut problem = Problem::error("mars::graph::cycle", message);
            for (k, &i) in cycle.iter().enumerate().take(SHOWN) {
                let next = cycle[(k + 1) % cycle.len()];
                let read = deps[i].iter().find(|(s, _)| *s == next).map(|(_, sp)| *sp);
                let label = format!("`{}` reads `{}`", name_of(i).name, name_of(next).name);
                problem = problem.label(read.unwrap_or(name_of(i).span), label);
            }
            self.sink
                .push(problem.help("a pipeline is a DAG: no value may depend on itself"));
        }
    }

    fn check_statement(
        &mut self,
        p: &ast::PipelineItem,
        i: usize,
        outputs: &mut BTreeMap<String, (Span, ir::Output)>,
    ) {
        match &p.body[i] {
            ast::Stmt::Let {
                targets,
                expr,
                annotations,
                ..
            } => {
                let names = targets.names();
                let Some(vals) = self.top_expr(expr, &names[0].name, annotations) else {
                    return;
                };
                if vals.len() != names.len() {
                    let span = match targets {
                        ast::LetTargets::Single(i) => i.span,
                        ast::LetTargets::Tuple(_, s) => *s,
                    };
                    let help = if vals.len() > 1 {
                        let ns: Vec<String> =
                            (0..vals.len()).map(|k| format!("x{}", k + 1)).collect();
                        format!("bind every output: `let ({}) = …`", ns.join(", "))
                    } else {
                        "bind one name: `let x = …`".to_string()
                    };
                    self.sink.push(
                        Problem::error(
                            "mars::type::output_count",
                            format!(
                                "the expression has {} output{}, but {} name{} bound",
                                vals.len(),
                                plural(vals.len()),
                                names.len(),
                                if names.len() == 1 { " is" } else { "s are" }
                            ),
                        )
                        .label(span, format!("{} name{}", names.len(), plural(names.len())))
                        .label(
                            expr.span(),
                            format!("{} output{}", vals.len(), plural(vals.len())),
                        )
                        .help(help),
                    );
                    return;
                }
                self.values[i] = Some(vals);
            }
            ast::Stmt::Output {
                name,
                expr,
                annotations,
                span,
            } => {
                let declared = p.outputs.iter().find(|o| o.name.name == name.name);
                let Some(declared) = declared else {
                    let mut problem = Problem::error(
                        "mars::pipeline::unknown_output",
                        format!("`{}` is not an output of `{}`", name.name, p.name.name),
                    )
                    .label(name.span, "not declared in `-> (…)`");
                    let outs: Vec<&str> = p.outputs.iter().map(|o| o.name.name.as_str()).collect();
                    problem = match did_you_mean(&name.name, outs) {
                        Some(s) => problem.help(format!("did you mean `{s}`?")),
                        None => {
                            problem.help(format!("to bind a name, write `let {} = …`", name.name))
                        }
                    };
                    self.sink.push(problem);
                    // Still check the expression.
                    self.top_expr(expr, &name.name, annotations);
                    return;
                };
                let vals = self.top_expr(expr, &name.name, annotations);
                if let Some(first) = self.assigned.get(&name.name) {
                    self.sink.push(
                        Problem::error(
                            "mars::pipeline::output_twice",
                            format!("the output `{}` is assigned twice", name.name),
                        )
                        .label(name.span, "assigned again here")
                        .label(*first, "first assigned here")
                        .help("every output is assigned exactly once"),
                    );
                    return;
                }
                self.assigned.insert(name.name.clone(), name.span);
                let Some(vals) = vals else { return };
                let val = match vals.as_slice() {
                    [v] => v.clone(),
                    _ => {
                        self.sink.push(
                            Problem::error(
                                "mars::type::output_count",
                                format!(
                                    "an output takes one value, but the expression has {}",
                                    vals.len()
                                ),
                            )
                            .label(expr.span(), format!("{} outputs", vals.len()))
                            .help("bind them with `let (a, b) = …` and assign one"),
                        );
                        return;
                    }
                };
                let mut problems = Vec::new();
                let Some(ty) = lower_type(&declared.ty, &[], &mut problems) else {
                    return;
                };
                let val = self.coerce(val, &ty);
                if let Some(actual) = &val.ty {
                    if !compatible(&ty, actual) {
                        self.sink.push(
                            Problem::error(
                                "mars::type::mismatch",
                                format!(
                                    "the output `{}` is `{ty}`, but the expression is `{actual}`",
                                    name.name
                                ),
                            )
                            .label(expr.span(), format!("this is `{actual}`"))
                            .label(declared.ty.span, "declared here"),
                        );
                        return;
                    }
                }
                outputs.insert(
                    name.name.clone(),
                    (
                        name.span,
                        ir::Output {
                            name: name.name.clone(),
                            ty,
                            from: val.source,
                            span: (*span).into(),
                        },
                    ),
                );
            }
            ast::Stmt::Slo { .. } => {}
        }
    }

    /// The outermost expression of a statement: its call takes the id `id` and the
    /// annotations.
    fn top_expr(
        &mut self,
        expr: &ast::Expr,
        id: &str,
        annotations: &[ast::Annotation],
    ) -> Option<Vec<Val>> {
        match expr {
            ast::Expr::Call(call) => {
                let mut ids = Ids {
                    base: id.to_string(),
                    used: BTreeSet::new(),
                    top_taken: false,
                };
                let (vals, node) = self.call(call, &mut ids);
                let generates = node.map(|n| self.graph[n].generates);
                let consts = ConstScope {
                    env: self.env,
                    module: self.env.user,
                    scope: Some(self.scope),
                };
                let anns = check_annotations(annotations, generates, &consts, self.sink);
                if let Some(n) = node {
                    self.graph[n].annotations = anns;
                }
                vals
            }
            _ => {
                if let Some(a) = annotations.first() {
                    self.sink.push(
                        Problem::error(
                            "mars::annotation::not_a_call",
                            "annotations apply to a call, and this statement has none",
                        )
                        .label(a.span, "nothing to annotate")
                        .label(expr.span(), "not a call"),
                    );
                }
                self.expr(
                    expr,
                    &mut Ids {
                        base: id.to_string(),
                        used: BTreeSet::new(),
                        top_taken: true,
                    },
                )
                .map(|v| vec![v])
            }
        }
    }

    /// An expression that must give one value.
    fn expr(&mut self, e: &ast::Expr, ids: &mut Ids) -> Option<Val> {
        match e {
            ast::Expr::Lit(lit) if super::decls::out_of_range_literal(lit).is_some() => {
                if let Some(p) = super::decls::out_of_range_literal(lit) {
                    self.sink.push(p);
                }
                None
            }
            ast::Expr::Lit(lit) => match data_literal(lit) {
                Some(l) => Some(Val {
                    ty: literal_type(&l),
                    source: Source::Const(l),
                }),
                None => {
                    let what = if matches!(lit.kind, ast::LitKind::Duration(_)) {
                        "a duration"
                    } else {
                        "a rate"
                    };
                    self.sink.push(
                        Problem::error("mars::type::mismatch", format!("{what} is not data"))
                            .label(lit.span, "cannot flow on an edge")
                            .help("durations and rates are for static parameters, annotations and SLOs"),
                    );
                    None
                }
            },
            ast::Expr::Name(path) => self.name_value(path),
            ast::Expr::Call(call) => {
                let (vals, _) = self.call(call, ids);
                let vals = vals?;
                match vals.as_slice() {
                    [v] => Some(v.clone()),
                    _ => {
                        self.sink.push(
                            Problem::error(
                                "mars::type::output_count",
                                format!(
                                    "`{}` has {} outputs, where one value is needed",
                                    call.callee.text(),
                                    vals.len()
                                ),
                            )
                            .label(call.span, format!("{} outputs", vals.len()))
                            .help("bind them first: `let (a, b) = …`, then pass one"),
                        );
                        None
                    }
                }
            }
        }
    }

    fn name_value(&mut self, path: &ast::Path) -> Option<Val> {
        if let Some(ident) = path.single() {
            if let Some(&(local, _)) = self.locals.get(&ident.name) {
                return match local {
                    Local::Input(i) => {
                        self.used.insert(ident.name.clone());
                        let input = &self.inputs[i];
                        Some(Val {
                            source: Source::Input(input.name.clone()),
                            ty: Some(input.ty.clone()),
                        })
                    }
                    Local::Binding(stmt, k) => {
                        self.used.insert(ident.name.clone());
                        self.values[stmt].as_ref().and_then(|v| v.get(k).cloned())
                    }
                    Local::Output => {
                        self.sink.push(
                            Problem::error(
                                "mars::resolve::not_a_value",
                                format!(
                                    "`{}` is an output of the pipeline and cannot be read",
                                    ident.name
                                ),
                            )
                            .label(ident.span, "an output")
                            .help(format!(
                                "bind the value with `let` and assign the output from it: `{} = x`",
                                ident.name
                            )),
                        );
                        None
                    }
                };
            }
        }
        let entity = self.resolve_path(path, true)?;
        match entity {
            Entity::Const(i) => {
                let lit = &self.env.consts[i];
                match data_literal(lit) {
                    Some(l) => Some(Val {
                        ty: literal_type(&l),
                        source: Source::Const(l),
                    }),
                    None => {
                        self.sink.push(
                            Problem::error(
                                "mars::type::mismatch",
                                format!("the constant `{}` is not data", path.text()),
                            )
                            .label(path.span, "a duration or rate cannot flow on an edge"),
                        );
                        None
                    }
                }
            }
            other => {
                let help = match other {
                    Entity::Fn(_) | Entity::Model(_) => format!("call it: `{}(…)`", path.text()),
                    _ => "a value is an input, a binding, a constant or a call".to_string(),
                };
                self.sink.push(
                    Problem::error(
                        "mars::resolve::not_a_value",
                        format!("`{}` is {}, not a value", path.text(), other.describe()),
                    )
                    .label(path.span, "not a value")
                    .help(help),
                );
                None
            }
        }
    }

    /// What a path names among items (locals are handled by the caller). Reports unknown
    /// names. `value` says whether a value or a callee was wanted (for the suggestions).
    fn resolve_path(&mut self, path: &ast::Path, value: bool) -> Option<Entity> {
        let segs = &path.segments;
        if let [one] = segs.as_slice() {
            if let Some(&(e, _)) = self.scope.names.get(&one.name) {
                return Some(e);
            }
            let mut candidates: Vec<&str> = Vec::new();
            // Suggesting costs a comparison with every name in scope: after
            // `SUGGESTION_BUDGET` unknown names, a file gets no more suggestions.
            if self.suggestions_left > 0 {
                self.suggestions_left -= 1;
                candidates.extend(self.scope.names.keys().map(String::as_str));
                if value {
                    candidates.extend(self.locals.keys().map(String::as_str));
                }
            }
            let mut problem = Problem::error(
                "mars::resolve::unknown_name",
                format!("unknown name `{}`", one.name),
            )
            .label(one.span, "not found in this scope");
            if let Some(s) = did_you_mean(&one.name, candidates) {
                problem = problem.help(format!("did you mean `{s}`?"));
            } else if let Some(m) = self.env.modules_declaring(&one.name).first() {
                problem = problem.help(format!(
                    "`{}` is declared in `{m}`: add `use {m}.{{{}}}` or write `{m}.{}`",
                    one.name, one.name, one.name
                ));
            }
            self.sink.push(problem);
            return None;
        }
        // A module path and an item: `std.list.len`, or `list.len` after `use std.list`.
        let (last, module_segs) = segs.split_last().expect("two or more segments");
        let mut module_path: Vec<String> = module_segs.iter().map(|s| s.name.clone()).collect();
        if let Some(&(Entity::Module(m), _)) = self.scope.names.get(&module_segs[0].name) {
            module_path[0] = self.env.modules[m].path.clone();
        }
        let module_path = module_path.join(".");
        let module_span = module_segs[0]
            .span
            .to(module_segs[module_segs.len() - 1].span);
        let Some(&m) = self.env.module_by_path.get(&module_path) else {
            let mut problem = Problem::error(
                "mars::resolve::unknown_name",
                format!("unknown module `{module_path}`"),
            )
            .label(module_span, "no such module");
            if let Some(s) = did_you_mean(
                &module_path,
                self.env.module_by_path.keys().map(String::as_str),
            ) {
                problem = problem.help(format!("did you mean `{s}`?"));
            }
            self.sink.push(problem);
            return None;
        };
        match self.env.modules[m].items.get(&last.name) {
            Some(&(e, _)) => Some(e),
            None => {
                let mut problem = Problem::error(
                    "mars::resolve::unknown_name",
                    format!("`{module_path}` has no item `{}`", last.name),
                )
                .label(last.span, "not declared there");
                if let Some(s) = did_you_mean(
                    &last.name,
                    self.env.modules[m].items.keys().map(String::as_str),
                ) {
                    problem = problem.help(format!("did you mean `{s}`?"));
                }
                self.sink.push(problem);
                None
            }
        }
    }

    /// The signature a callee names. `None` after reporting why not (or when the
    /// declaration itself had errors).
    fn callee(&mut self, path: &ast::Path) -> Option<&Sig> {
        if let Some(ident) = path.single() {
            if self.locals.contains_key(&ident.name) {
                self.sink.push(
                    Problem::error(
                        "mars::resolve::not_callable",
                        format!(
                            "`{}` is a value of this pipeline, not a node kind",
                            ident.name
                        ),
                    )
                    .label(ident.span, "cannot be called"),
                );
                return None;
            }
        }
        let entity = self.resolve_path(path, false)?;
        match entity {
            Entity::Fn(i) | Entity::Model(i) => self.env.sigs[i].as_ref(),
            other => {
                let help = match other {
                    Entity::Pipeline => {
                        "a pipeline cannot call a pipeline; declare the shared steps as fns"
                    }
                    Entity::Arch(_) => "declare a `model` with `arch = \"…\"` and call the model",
                    _ => "only fns and models can be called",
                };
                self.sink.push(
                    Problem::error(
                        "mars::resolve::not_callable",
                        format!("`{}` is {}, not a node kind", path.text(), other.describe()),
                    )
                    .label(path.span, "cannot be called")
                    .help(help),
                );
                None
            }
        }
    }

    /// An Int literal where a Float is expected becomes a Float.
    fn coerce(&self, val: Val, expected: &DataType) -> Val {
        match (&val.source, expected) {
            (Source::Const(Literal::Int(i)), DataType::Float) => Val {
                source: Source::Const(Literal::Float(*i as f64)),
                ty: Some(DataType::Float),
            },
            _ => val,
        }
    }

    /// A call (or `map`): one node. Returns its output values and the node.
    fn call(&mut self, call: &ast::Call, ids: &mut Ids) -> (Option<Vec<Val>>, Option<NodeIndex>) {
        let is_map = call.callee.single().is_some_and(|i| i.name == "map")
            && !self.locals.contains_key("map");
        let positional: Vec<&ast::Expr> = call
            .args
            .iter()
            .filter_map(|a| {
                if let ast::Arg::Positional(e) = a {
                    Some(e)
                } else {
                    None
                }
            })
            .collect();
        // The node kind, and which positional arguments are data.
        let (kind_path, data_args): (Option<&ast::Path>, &[&ast::Expr]) = if is_map {
            match positional.first() {
                Some(ast::Expr::Name(p)) => (Some(p), &positional[1..]),
                Some(other) => {
                    self.sink.push(
                        Problem::error(
                            "mars::type::map_callee",
                            "the first argument of `map` must name a fn or a model",
                        )
                        .label(other.span(), "not a node kind")
                        .help("write `map(F, list, …)` with `F` the name of a fn or model"),
                    );
                    (None, &positional[1..])
                }
                None => {
                    self.sink.push(
                        Problem::error("mars::type::arity", "`map` needs a node kind and a list")
                            .label(call.span, "no arguments")
                            .help("write `map(F, list, …)`"),
                    );
                    (None, &[])
                }
            }
        } else {
            (Some(&call.callee), &positional[..])
        };
        let kind_name = kind_path
            .map(|p| p.last().name.clone())
            .unwrap_or_else(|| "map".to_string());
        let id = ids.next(&kind_name);
        let sig = kind_path.and_then(|p| self.callee(p)).cloned();
        // Evaluate every argument, even when the callee is broken, so that their own
        // problems are found and their bindings count as used.
        let vals: Vec<Option<Val>> = data_args.iter().map(|e| self.expr(e, ids)).collect();
        if is_map && kind_path.is_some() && data_args.is_empty() {
            self.sink.push(
                Problem::error("mars::type::arity", "`map` needs a list to map over")
                    .label(call.span, "no list")
                    .help("write `map(F, list, …)`"),
            );
            return (None, None);
        }
        let Some(sig) = sig else { return (None, None) };
        let params = self.statics(call, &sig);
        if vals.len() != sig.ports.len() {
            let (expected, found) = (sig.ports.len(), vals.len());
            let message = if is_map {
                format!("`{}` takes {expected} data argument{}, but `map` passes it {found} (the list's element and {} more)", sig.name, plural(expected), found.saturating_sub(1))
            } else {
                format!(
                    "`{}` takes {expected} data argument{}, but {found} {} given",
                    sig.name,
                    plural(expected),
                    if found == 1 { "was" } else { "were" }
                )
            };
            self.sink.push(
                Problem::error("mars::type::arity", message)
                    .label(call.span, format!("expected {expected}, found {found}"))
                    .help(format!("the signature is `{}`", sig.display())),
            );
            return (None, None);
        }
        let mut subst = Subst::default();
        let mut ok = params.is_some();
        let mut arg_vals = Vec::with_capacity(vals.len());
        for (k, ((pname, pty), val)) in sig.ports.iter().zip(vals).enumerate() {
            let mapped = is_map && k == 0;
            let Some(val) = val else {
                ok = false;
                // Keep the ports aligned; the program is not returned with errors.
                arg_vals.push(Val {
                    source: Source::Const(Literal::Bool(false)),
                    ty: None,
                });
                continue;
            };
            let val = match subst.apply(pty) {
                Some(expected) if !mapped => self.coerce(val, &expected),
                _ => val,
            };
            let Some(actual) = val.ty.clone() else {
                ok = false;
                arg_vals.push(val);
                continue;
            };
            // Under `map`, the list's elements feed the first port.
            let actual = if mapped {
                match actual {
                    DataType::List(e) => *e,
                    other => {
                        self.sink.push(
                            Problem::error(
                                "mars::type::map_not_list",
                                format!("`map` needs a list, but this is `{other}`"),
                            )
                            .label(data_args[k].span(), format!("`{other}`, not a list"))
                            .help(format!("call `{}` directly to apply it once", sig.name)),
                        );
                        ok = false;
                        arg_vals.push(val);
                        continue;
                    }
                }
            } else {
                actual
            };
            if !subst.unify(pty, &actual) {
                let expected = subst.apply(pty).unwrap_or_else(|| pty.clone());
                let what = if mapped {
                    "list's elements are"
                } else {
                    "argument is"
                };
                self.sink.push(
                    Problem::error("mars::type::mismatch", format!("type mismatch: `{}` expects `{expected}` for `{pname}`, found `{actual}`", sig.name))
                        .label(data_args[k].span(), format!("this {what} `{actual}`"))
                        .help(format!("the signature is `{}`", sig.display())),
                );
                ok = false;
            }
            arg_vals.push(val);
        }
        let in_types: Vec<DataType> = sig
            .ports
            .iter()
            .map(|(_, t)| subst.apply(t).unwrap_or_else(|| t.clone()))
            .collect();
        let out_types: Vec<Option<DataType>> =
            sig.outputs.iter().map(|(_, t)| subst.apply(t)).collect();
        let node = ir::Node {
            id,
            kind: kind_path.map(|p| p.text()).unwrap_or_default(),
            implementation: sig.implementation.clone(),
            map_over: is_map.then_some(0),
            args: arg_vals.iter().map(|v| v.source.clone()).collect(),
            declared: sig
                .attributes
                .resolve(params.as_ref().unwrap_or(&BTreeMap::new())),
            params: params.unwrap_or_default(),
            in_types,
            out_types: out_types
                .iter()
                .zip(&sig.outputs)
                .map(|(t, (_, raw))| t.clone().unwrap_or_else(|| raw.clone()))
                .collect(),
            out_names: sig.outputs.iter().map(|(n, _)| n.clone()).collect(),
            annotations: ir::Annotations::default(),
            generates: sig.generates,
            gpu: sig.gpu,
            span: call.span.into(),
        };
        let n = self.graph.add_node(node);
        for (k, v) in arg_vals.iter().enumerate() {
            if let (Source::Node(from, port), Some(ty)) = (&v.source, &v.ty) {
                self.graph.add_edge(
                    *from,
                    n,
                    ir::Edge {
                        from_port: *port,
                        to_port: k,
                        ty: ty.clone(),
                    },
                );
            }
        }
        let outs = out_types
            .into_iter()
            .enumerate()
            .map(|(k, t)| Val {
                source: Source::Node(n, k),
                ty: if ok {
                    t.map(|t| {
                        if is_map {
                            DataType::List(Box::new(t))
                        } else {
                            t
                        }
                    })
                } else {
                    None
                },
            })
            .collect();
        (Some(outs), Some(n))
    }

    /// The static parameters of a call, defaults filled in. `None` if any was wrong.
    fn statics(&mut self, call: &ast::Call, sig: &Sig) -> Option<BTreeMap<String, Literal>> {
        let mut params = BTreeMap::new();
        let mut ok = true;
        let mut given: BTreeMap<&str, Span> = BTreeMap::new();
        for a in &call.args {
            let ast::Arg::Named { name, value, span } = a else {
                continue;
            };
            if let Some(first) = given.insert(&name.name, *span) {
                self.sink.push(
                    Problem::error(
                        "mars::type::duplicate_param",
                        format!("the parameter `{}` is given twice", name.name),
                    )
                    .label(*span, "given again here")
                    .label(first, "first given here"),
                );
                ok = false;
                continue;
            }
            let Some(st) = sig.statics.iter().find(|s| s.name == name.name) else {
                let mut problem = Problem::error(
                    "mars::type::unknown_param",
                    format!("`{}` has no parameter `{}`", sig.name, name.name),
                )
                .label(name.span, "unknown parameter");
                problem = if sig.ports.iter().any(|(p, _)| *p == name.name) {
                    problem.help(format!(
                        "`{}` is a data argument: pass it by position",
                        name.name
                    ))
                } else if let Some(s) =
                    did_you_mean(&name.name, sig.statics.iter().map(|s| s.name.as_str()))
                {
                    problem.help(format!("did you mean `{s}`?"))
                } else if sig.statics.is_empty() {
                    if sig.is_model {
                        problem.help("a model call takes data arguments only; its settings are keys of the model")
                    } else {
                        problem.help(format!("`{}` takes no static parameters", sig.name))
                    }
                } else {
                    let names: Vec<&str> = sig.statics.iter().map(|s| s.name.as_str()).collect();
                    problem.help(format!(
                        "the parameters of `{}` are: {}",
                        sig.name,
                        names.join(", ")
                    ))
                };
                self.sink.push(problem);
                ok = false;
                continue;
            };
            let value = match value {
                ast::Expr::Lit(l) => ast::Value::Lit(l.clone()),
                ast::Expr::Name(p)
                    if !p
                        .single()
                        .is_some_and(|i| self.locals.contains_key(&i.name)) =>
                {
                    ast::Value::Name(p.clone())
                }
                other => {
                    self.sink.push(
                        Problem::error("mars::type::param_not_static", format!("the parameter `{}` takes a literal value", name.name))
                            .label(other.span(), "computed at run time")
                            .help("static parameters are literals or constants; data is passed by position"),
                    );
                    ok = false;
                    continue;
                }
            };
            let what = format!("the parameter `{}` of `{}`", name.name, sig.name);
            match self
                .consts()
                .static_value(&value, &st.ty, "mars::type::param_type", &what)
            {
                Ok(l) => {
                    params.insert(st.name.clone(), l);
                }
                Err(p) => {
                    self.sink.push(p);
                    ok = false;
                }
            }
        }
        for st in &sig.statics {
            if params.contains_key(&st.name) || given.contains_key(st.name.as_str()) {
                continue;
            }
            match &st.default {
                Some(d) => {
                    params.insert(st.name.clone(), d.clone());
                }
                None => {
                    self.sink.push(
                        Problem::error(
                            "mars::type::missing_param",
                            format!("`{}` needs the parameter `{}`", sig.name, st.name),
                        )
                        .label(call.span, format!("no `{}`", st.name))
                        .help(format!(
                            "add `{} = …` ({})",
                            st.name,
                            st.ty.describe()
                        )),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(params)
    }

    fn report_unused(&mut self, p: &ast::PipelineItem) {
        for s in &p.body {
            if let ast::Stmt::Let { targets, .. } = s {
                for name in targets.names() {
                    if name.name.starts_with('_') || self.used.contains(&name.name) {
                        continue;
                    }
                    // Only the binding that owns the name (a duplicate was reported).
                    if !matches!(self.locals.get(&name.name), Some((Local::Binding(..), sp)) if *sp == name.span)
                    {
                        continue;
                    }
                    self.sink.push(
                        Problem::warning(
                            "mars::lint::unused_binding",
                            format!("`{}` is never used", name.name),
                        )
                        .label(name.span, "bound here, read nowhere")
                        .help(format!(
                            "use it, remove it, or name it `_{}` to keep it",
                            name.name
                        )),
                    );
                }
            }
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
