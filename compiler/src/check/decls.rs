//! Declarations: the items of every module by name, lowered to signatures (fns and models),
//! schemas (archs) and constants; and the names a user's file brings in with `use`.

use std::collections::BTreeMap;

use super::types::{lower_type, vars_of};
use super::{Parsed, Sink};
use crate::diagnostics::{did_you_mean, Problem, Source};
use crate::ir::{self, DataType, Literal};
use crate::syntax::ast::{self, Span};

pub type ModuleId = usize;

/// What a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// A node kind: index into [`Env::sigs`].
    Fn(usize),
    Model(usize),
    Arch(usize),
    Const(usize),
    Pipeline,
    Module(ModuleId),
}

impl Entity {
    pub fn describe(self) -> &'static str {
        match self {
            Entity::Fn(_) => "a fn",
            Entity::Model(_) => "a model",
            Entity::Arch(_) => "an arch",
            Entity::Const(_) => "a constant",
            Entity::Pipeline => "a pipeline",
            Entity::Module(_) => "a module",
        }
    }
}

/// One module: the user's file or a stdlib file.
#[derive(Debug)]
pub struct Module {
    pub path: String,
    pub items: BTreeMap<String, (Entity, Span)>,
    pub source: Source,
}

/// The type of a static parameter or model key.
#[derive(Debug, Clone, PartialEq)]
pub enum StaticType {
    Int,
    Float,
    Text,
    Bool,
    Duration,
    Symbols(Vec<String>),
}

impl StaticType {
    pub fn describe(&self) -> String {
        match self {
            StaticType::Int => "Int".into(),
            StaticType::Float => "Float".into(),
            StaticType::Text => "Text".into(),
            StaticType::Bool => "Bool".into(),
            StaticType::Duration => "Duration".into(),
            StaticType::Symbols(s) => format!("one of {}", s.join(", ")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StaticSig {
    pub name: String,
    pub ty: StaticType,
    pub default: Option<Literal>,
}

/// The signature of a node kind (a fn or a model).
#[derive(Debug, Clone)]
pub struct Sig {
    pub name: String,
    pub ports: Vec<(String, DataType)>,
    pub statics: Vec<StaticSig>,
    pub outputs: Vec<(String, DataType)>,
    pub implementation: ir::Implementation,
    pub generates: bool,
    pub is_model: bool,
    /// The kind has a GPU implementation (`@gpu` on the fn or on the model's arch).
    pub gpu: bool,
    /// A fn declaration's attributes (a model has none).
    pub attributes: ir::DeclAttributes,
}

impl Sig {
    /// `name(a: T, b: U; s: Float = 0.0) -> T`, for help lines.
    pub fn display(&self) -> String {
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|(n, t)| format!("{n}: {t}"))
            .collect();
        let mut s = format!("{}({}", self.name, ports.join(", "));
        if !self.statics.is_empty() {
            let statics: Vec<String> = self
                .statics
                .iter()
                .map(|st| format!("{}: {}", st.name, st.ty.describe()))
                .collect();
            s.push_str(&format!("; {}", statics.join(", ")));
        }
        s.push(')');
        match self.outputs.as_slice() {
            [(_, t)] => s.push_str(&format!(" -> {t}")),
            outs => {
                let outs: Vec<String> = outs.iter().map(|(n, t)| format!("{n}: {t}")).collect();
                s.push_str(&format!(" -> ({})", outs.join(", ")));
            }
        }
        s
    }
}

#[derive(Debug, Clone)]
pub enum KeyDefault {
    Required,
    Value(Literal),
    FromWeights,
}

#[derive(Debug, Clone)]
pub struct ArchKeySig {
    pub name: String,
    pub ty: StaticType,
    pub default: KeyDefault,
}

#[derive(Debug, Clone)]
pub struct Arch {
    pub name: String,
    pub keys: Vec<ArchKeySig>,
    /// Marked `@gpu`: models of this architecture may be placed on a GPU.
    pub gpu: bool,
}

/// Every declaration the checker knows.
#[derive(Debug)]
pub struct Env {
    pub modules: Vec<Module>,
    pub module_by_path: BTreeMap<String, ModuleId>,
    /// `None` where the declaration had errors (already reported).
    pub sigs: Vec<Option<Sig>>,
    pub archs: Vec<Option<Arch>>,
    pub consts: Vec<ast::Lit>,
    pub user: ModuleId,
}

impl Env {
    /// Stdlib modules that declare `name`, for a help line.
    pub fn modules_declaring(&self, name: &str) -> Vec<&str> {
        self.modules
            .iter()
            .enumerate()
            .filter(|(id, m)| *id != self.user && m.items.contains_key(name))
            .map(|(_, m)| m.path.as_str())
            .collect()
    }
}

/// Items of the user's file plus the names its `use` lists bring in.
#[derive(Debug, Default)]
pub struct Scope {
    pub names: BTreeMap<String, (Entity, Span)>,
}

/// Pass 2: every module's items by name.
pub(crate) fn collect(user: &Parsed, std_files: &[(String, Parsed)], sink: &mut Sink) -> Env {
    let mut env = Env {
        modules: Vec::new(),
        module_by_path: BTreeMap::new(),
        sigs: Vec::new(),
        archs: Vec::new(),
        consts: Vec::new(),
        user: std_files.len(),
    };
    let files = std_files
        .iter()
        .map(|(p, f)| (p.clone(), f))
        .chain(std::iter::once((String::new(), user)));
    for (id, (path, parsed)) in files.enumerate() {
        sink.source = parsed.source.clone();
        let mut items: BTreeMap<String, (Entity, Span)> = BTreeMap::new();
        for item in &parsed.ast.items {
            let Some(name) = item.name() else { continue };
            if name.name == "map" {
                sink.push(
                    Problem::error("mars::resolve::reserved_name", "`map` is reserved")
                        .label(name.span, "`map(F, list, …)` is built into the language")
                        .help("choose another name"),
                );
                continue;
            }
            let entity = match item {
                ast::Item::Fn(_) => {
                    env.sigs.push(None);
                    Entity::Fn(env.sigs.len() - 1)
                }
                ast::Item::Model(_) => {
                    env.sigs.push(None);
                    Entity::Model(env.sigs.len() - 1)
                }
                ast::Item::Arch(_) => {
                    env.archs.push(None);
                    Entity::Arch(env.archs.len() - 1)
                }
                ast::Item::Const(c) => {
                    env.consts.push(c.value.clone());
                    Entity::Const(env.consts.len() - 1)
                }
                ast::Item::Pipeline(_) => Entity::Pipeline,
                ast::Item::Use(_) => continue,
            };
            if let Some((_, first)) = items.get(&name.name) {
                sink.push(
                    Problem::error(
                        "mars::resolve::duplicate_item",
                        format!("two items are named `{}`", name.name),
                    )
                    .label(name.span, "declared again here")
                    .label(*first, "first declared here")
                    .help("rename one of them"),
                );
                continue;
            }
            items.insert(name.name.clone(), (entity, name.span));
        }
        if id != std_files.len() {
            env.module_by_path.insert(path.clone(), id);
        }
        env.modules.push(Module {
            path,
            items,
            source: parsed.source.clone(),
        });
    }
    env
}

/// The AST item behind each entity slot, in the order [`collect`] made them.
fn items_in_order<'a>(
    user: &'a Parsed,
    std_files: &'a [(String, Parsed)],
) -> Vec<(ModuleId, &'a ast::Item)> {
    let mut out = Vec::new();
    for (id, parsed) in std_files
        .iter()
        .map(|(_, p)| p)
        .chain(std::iter::once(user))
        .enumerate()
    {
        for item in &parsed.ast.items {
            out.push((id, item));
        }
    }
    out
}

/// Pass 3: lower fns and archs, then models (which need the archs).
pub(crate) fn lower_all(
    env: &mut Env,
    user: &Parsed,
    std_files: &[(String, Parsed)],
    sink: &mut Sink,
) {
    let items = items_in_order(user, std_files);
    // Consts need no lowering; archs and fns next.
    for &(module, item) in &items {
        sink.source = env.modules[module].source.clone();
        match item {
            ast::Item::Arch(a) => {
                if let Some((Entity::Arch(slot), span)) =
                    env.modules[module].items.get(&a.name.name).copied()
                {
                    if span == a.name.span {
                        env.archs[slot] = lower_arch(env, module, a, sink);
                    }
                }
            }
            ast::Item::Fn(f) => {
                if let Some((Entity::Fn(slot), span)) =
                    env.modules[module].items.get(&f.name.name).copied()
                {
                    if span == f.name.span {
                        env.sigs[slot] = lower_fn(env, module, f, sink);
                    }
                }
            }
            ast::Item::Const(c) => check_const(c, sink),
            _ => {}
        }
    }
    for &(module, item) in &items {
        sink.source = env.modules[module].source.clone();
        if let ast::Item::Model(m) = item {
            if let Some((Entity::Model(slot), span)) =
                env.modules[module].items.get(&m.name.name).copied()
            {
                if span == m.name.span {
                    env.sigs[slot] = lower_model(env, module, m, sink);
                }
            }
        }
    }
}

fn check_const(c: &ast::ConstItem, sink: &mut Sink) {
    if let Some(p) = out_of_range_literal(&c.value) {
        sink.push(p);
        return;
    }
    if let ast::LitKind::Float(f) = c.value.kind {
        if !f.is_finite() {
            sink.push(
                Problem::error("mars::type::bad_literal", "number out of range")
                    .label(c.value.span, "too large"),
            );
        }
    }
}

fn lower_static_type(t: &ast::ParamType, problems: &mut Vec<Problem>) -> Option<StaticType> {
    match t {
        ast::ParamType::Symbols(syms, _) => Some(StaticType::Symbols(
            syms.iter().map(|s| s.name.clone()).collect(),
        )),
        ast::ParamType::Type(te) => {
            let ty = match te.name.name.as_str() {
                "Int" => StaticType::Int,
                "Float" => StaticType::Float,
                "Text" => StaticType::Text,
                "Bool" => StaticType::Bool,
                "Duration" => StaticType::Duration,
                other => {
                    let mut p = Problem::error(
                        "mars::type::bad_static_type",
                        format!("`{other}` cannot be the type of a static parameter"),
                    )
                    .label(
                        te.span,
                        "expected Int, Float, Text, Bool, Duration or `a | b | c`",
                    );
                    if let Some(s) =
                        did_you_mean(other, ["Int", "Float", "Text", "Bool", "Duration"])
                    {
                        p = p.help(format!("did you mean `{s}`?"));
                    }
                    problems.push(p);
                    return None;
                }
            };
            if !te.args.is_empty() {
                problems.push(
                    Problem::error(
                        "mars::type::bad_static_type",
                        format!("`{}` takes no type arguments", te.name.name),
                    )
                    .label(te.span, "remove the `<…>`"),
                );
                return None;
            }
            Some(ty)
        }
    }
}

fn describe_lit(k: &ast::LitKind) -> &'static str {
    match k {
        ast::LitKind::Int(_) => "an Int",
        ast::LitKind::Float(_) => "a Float",
        ast::LitKind::Text(_) => "a Text",
        ast::LitKind::Bool(_) => "a Bool",
        ast::LitKind::Duration(_) => "a duration",
        ast::LitKind::Rate(_) => "a rate",
    }
}

/// An integer literal beyond the range of `Int` (the syntax keeps it as a float), or a
/// duration beyond [`mars_plan::limits::MAX_DURATION_MS`]: a `mars::type::bad_literal`.
pub(crate) fn out_of_range_literal(lit: &ast::Lit) -> Option<Problem> {
    match lit.kind {
        ast::LitKind::Float(_) if is_integer_token(&lit.raw) => Some(
            Problem::error(
                "mars::type::bad_literal",
                format!("the integer {} is out of the range of Int", lit.raw),
            )
            .label(lit.span, "out of range")
            .help("an Int is from -9223372036854775808 to 9223372036854775807"),
        ),
        ast::LitKind::Duration(ms)
            if !(ms.is_finite() && ms <= mars_plan::limits::MAX_DURATION_MS) =>
        {
            Some(
                Problem::error(
                    "mars::type::bad_literal",
                    format!("the duration {} is out of range", lit.raw),
                )
                .label(lit.span, "longer than 24h")
                .help("a duration is at most 24h (86400s; SPEC 7.1)"),
            )
        }
        _ => None,
    }
}

/// Whether a literal's text is an integer token (digits, an optional sign).
fn is_integer_token(raw: &str) -> bool {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A literal as a value of `ty`, if it is one.
fn lit_as(lit: &ast::Lit, ty: &StaticType) -> Option<Literal> {
    use ast::LitKind as K;
    match (&lit.kind, ty) {
        (K::Int(i), StaticType::Int) => Some(Literal::Int(*i)),
        (K::Int(i), StaticType::Float) => Some(Literal::Float(*i as f64)),
        (K::Float(f), StaticType::Float) if f.is_finite() => Some(Literal::Float(*f)),
        (K::Text(s), StaticType::Text) => Some(Literal::Text(s.clone())),
        (K::Bool(b), StaticType::Bool) => Some(Literal::Bool(*b)),
        (K::Duration(d), StaticType::Duration) if d.is_finite() => Some(Literal::Duration(*d)),
        _ => None,
    }
}

/// How a static value names constants: the constants of one module.
pub struct ConstScope<'a> {
    pub env: &'a Env,
    pub module: ModuleId,
    /// The user's scope, for names brought in with `use`.
    pub scope: Option<&'a Scope>,
}

impl ConstScope<'_> {
    fn lookup(&self, name: &str) -> Option<Entity> {
        if let Some(scope) = self.scope {
            if let Some((e, _)) = scope.names.get(name) {
                return Some(*e);
            }
        }
        self.env.modules[self.module]
            .items
            .get(name)
            .map(|(e, _)| *e)
    }

    fn const_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.env.modules[self.module]
            .items
            .iter()
            .filter(|(_, (e, _))| matches!(e, Entity::Const(_)))
            .map(|(n, _)| n.as_str())
            .collect();
        if let Some(scope) = self.scope {
            names.extend(
                scope
                    .names
                    .iter()
                    .filter(|(_, (e, _))| matches!(e, Entity::Const(_)))
                    .map(|(n, _)| n.as_str()),
            );
        }
        names
    }

    /// The literal a constant name stands for.
    pub fn const_lit(&self, name: &str) -> Option<&ast::Lit> {
        match self.lookup(name) {
            Some(Entity::Const(i)) => Some(&self.env.consts[i]),
            _ => None,
        }
    }

    /// Check a static value (literal, constant or symbol) against `ty`. `code` names the
    /// error kind a wrong value is reported as; `what` names the thing being set.
    pub fn static_value(
        &self,
        v: &ast::Value,
        ty: &StaticType,
        code: &'static str,
        what: &str,
    ) -> Result<Literal, Problem> {
        match v {
            ast::Value::Lit(lit) if out_of_range_literal(lit).is_some() => {
                Err(out_of_range_literal(lit).expect("just checked"))
            }
            ast::Value::Lit(lit) => lit_as(lit, ty).ok_or_else(|| {
                Problem::error(
                    code,
                    format!(
                        "{what} expects {}, found {}",
                        ty.describe(),
                        describe_lit(&lit.kind)
                    ),
                )
                .label(lit.span, format!("expected {}", ty.describe()))
            }),
            ast::Value::Name(path) => {
                let name = path.text();
                if let StaticType::Symbols(syms) = ty {
                    if syms.contains(&name) {
                        return Ok(Literal::Symbol(name));
                    }
                }
                if let Some(lit) = path.single().and_then(|i| self.const_lit(&i.name)) {
                    return lit_as(lit, ty).ok_or_else(|| {
                        Problem::error(
                            code,
                            format!(
                                "{what} expects {}, but the constant `{name}` is {}",
                                ty.describe(),
                                describe_lit(&lit.kind)
                            ),
                        )
                        .label(path.span, format!("expected {}", ty.describe()))
                    });
                }
                match ty {
                    StaticType::Symbols(syms) => {
                        let mut p = Problem::error(
                            code,
                            format!("`{name}` is not a valid value for {what}"),
                        )
                        .label(path.span, format!("expected {}", ty.describe()));
                        if let Some(s) = did_you_mean(&name, syms.iter().map(String::as_str)) {
                            p = p.help(format!("did you mean `{s}`?"));
                        }
                        Err(p)
                    }
                    _ => {
                        let mut p = Problem::error(
                            "mars::resolve::unknown_name",
                            format!("unknown constant `{name}`"),
                        )
                        .label(
                            path.span,
                            format!("expected {} or a constant", ty.describe()),
                        );
                        if let Some(s) = did_you_mean(&name, self.const_names()) {
                            p = p.help(format!("did you mean `{s}`?"));
                        } else if ty == &StaticType::Text {
                            p = p.help(format!("write text in quotes: \"{name}\""));
                        }
                        Err(p)
                    }
                }
            }
        }
    }
}

fn lower_arch(env: &Env, module: ModuleId, a: &ast::ArchItem, sink: &mut Sink) -> Option<Arch> {
    let mut problems = Vec::new();
    let consts = ConstScope {
        env,
        module,
        scope: None,
    };
    let mut keys: Vec<ArchKeySig> = Vec::new();
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    let mut ok = true;
    for k in &a.keys {
        if let Some(first) = seen.insert(&k.name.name, k.name.span) {
            problems.push(
                Problem::error(
                    "mars::model::duplicate_key",
                    format!("the key `{}` is declared twice", k.name.name),
                )
                .label(k.name.span, "declared again here")
                .label(first, "first declared here"),
            );
            ok = false;
            continue;
        }
        let Some(ty) = lower_static_type(&k.ty, &mut problems) else {
            ok = false;
            continue;
        };
        let default = match &k.default {
            ast::ArchDefault::Required => KeyDefault::Required,
            ast::ArchDefault::FromWeights(_) => KeyDefault::FromWeights,
            ast::ArchDefault::Value(v) => {
                match consts.static_value(
                    v,
                    &ty,
                    "mars::type::param_type",
                    &format!("the key `{}`", k.name.name),
                ) {
                    Ok(l) => KeyDefault::Value(l),
                    Err(p) => {
                        problems.push(p);
                        ok = false;
                        continue;
                    }
                }
            }
        };
        keys.push(ArchKeySig {
            name: k.name.name.clone(),
            ty,
            default,
        });
    }
    sink.extend(problems);
    ok.then(|| Arch {
        name: a.name.name.clone(),
        keys,
        gpu: a.gpu.is_some(),
    })
}

fn lower_fn(env: &Env, module: ModuleId, f: &ast::FnItem, sink: &mut Sink) -> Option<Sig> {
    let mut problems = Vec::new();
    let consts = ConstScope {
        env,
        module,
        scope: None,
    };
    let mut names: BTreeMap<String, Span> = BTreeMap::new();
    let mut dup = |ident: &ast::Ident, problems: &mut Vec<Problem>, what: &str| {
        if let Some(first) = names.insert(ident.name.clone(), ident.span) {
            problems.push(
                Problem::error(
                    "mars::fn::duplicate_param",
                    format!("two {what}s are named `{}`", ident.name),
                )
                .label(ident.span, "declared again here")
                .label(first, "first declared here"),
            );
        }
    };
    for t in &f.type_params {
        dup(t, &mut problems, "type parameter");
    }
    let type_params: Vec<String> = f.type_params.iter().map(|t| t.name.clone()).collect();
    let mut names: BTreeMap<String, Span> = BTreeMap::new();
    let mut dup = |ident: &ast::Ident, problems: &mut Vec<Problem>| {
        if let Some(first) = names.insert(ident.name.clone(), ident.span) {
            problems.push(
                Problem::error(
                    "mars::fn::duplicate_param",
                    format!("two parameters are named `{}`", ident.name),
                )
                .label(ident.span, "declared again here")
                .label(first, "first declared here"),
            );
        }
    };
    let mut ports = Vec::new();
    for p in &f.ports {
        dup(&p.name, &mut problems);
        ports.push((
            p.name.name.clone(),
            lower_type(&p.ty, &type_params, &mut problems),
        ));
    }
    let mut statics = Vec::new();
    for s in f.statics.iter().flatten() {
        dup(&s.name, &mut problems);
        let Some(ty) = lower_static_type(&s.ty, &mut problems) else {
            continue;
        };
        let default = match &s.default {
            None => None,
            Some(v) => match consts.static_value(
                v,
                &ty,
                "mars::type::param_type",
                &format!("the parameter `{}`", s.name.name),
            ) {
                Ok(l) => Some(l),
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
        };
        statics.push(StaticSig {
            name: s.name.name.clone(),
            ty,
            default,
        });
    }
    let outputs: Vec<(String, Option<DataType>, Span)> = match &f.outputs {
        ast::FnOutputs::Single(t) => vec![(
            "out".to_string(),
            lower_type(t, &type_params, &mut problems),
            t.span,
        )],
        ast::FnOutputs::Named(outs, _) => {
            let mut names: BTreeMap<&str, Span> = BTreeMap::new();
            outs.iter()
                .map(|o| {
                    if let Some(first) = names.insert(&o.name.name, o.name.span) {
                        problems.push(
                            Problem::error(
                                "mars::fn::duplicate_param",
                                format!("two outputs are named `{}`", o.name.name),
                            )
                            .label(o.name.span, "declared again here")
                            .label(first, "first declared here"),
                        );
                    }
                    (
                        o.name.name.clone(),
                        lower_type(&o.ty, &type_params, &mut problems),
                        o.ty.span,
                    )
                })
                .collect()
        }
    };
    let mut bound = Vec::new();
    for (_, t) in &ports {
        if let Some(t) = t {
            vars_of(t, &mut bound);
        }
    }
    for (_, t, span) in &outputs {
        let mut vs = Vec::new();
        if let Some(t) = t {
            vars_of(t, &mut vs);
        }
        for v in vs {
            if !bound.contains(&v) {
                problems.push(
                    Problem::error(
                        "mars::fn::unbound_type_param",
                        format!(
                            "the type parameter `{v}` of an output is not the type of any input"
                        ),
                    )
                    .label(
                        *span,
                        format!("`{v}` cannot be inferred from the arguments"),
                    )
                    .help(format!(
                        "use `{v}` in the type of a data parameter, or write a concrete type"
                    )),
                );
            }
        }
    }
    let implementation = match &f.body {
        ast::FnBody::Builtin(lit) | ast::FnBody::Exec(lit) => {
            let text = match &lit.kind {
                ast::LitKind::Text(t) => t.trim().to_string(),
                _ => String::new(),
            };
            if text.is_empty() {
                problems.push(
                    Problem::error(
                        "mars::fn::empty_body",
                        "a fn needs a builtin id or a command",
                    )
                    .label(lit.span, "empty"),
                );
            }
            match &f.body {
                ast::FnBody::Builtin(_) => ir::Implementation::Builtin(text),
                ast::FnBody::Exec(_) => ir::Implementation::Exec(text),
            }
        }
    };
    let attributes = lower_attributes(f, &statics, &mut problems);
    let failed = !problems.is_empty();
    sink.extend(problems);
    if failed {
        return None;
    }
    let _ = module;
    Some(Sig {
        name: f.name.name.clone(),
        ports: ports
            .into_iter()
            .map(|(n, t)| (n, t.expect("no problems, so every type lowered")))
            .collect(),
        statics,
        outputs: outputs
            .into_iter()
            .map(|(n, t, _)| (n, t.expect("no problems, so every type lowered")))
            .collect(),
        implementation,
        generates: false,
        is_model: false,
        gpu: f.gpu.is_some(),
        attributes,
    })
}

/// A fn declaration's attributes: `@batchable` and `@cost(batch_ms = …, item_ms = …,
/// cores = …)`, whose terms are numbers or names of the fn's numeric static parameters.
fn lower_attributes(
    f: &ast::FnItem,
    statics: &[StaticSig],
    problems: &mut Vec<Problem>,
) -> ir::DeclAttributes {
    let mut out = ir::DeclAttributes::default();
    for a in &f.attributes {
        match a.name.name.as_str() {
            "batchable" if a.args.is_empty() => out.batchable = true,
            "cost" => {
                let mut terms = [
                    ir::CostTerm::Fixed(0.0),
                    ir::CostTerm::Fixed(0.0),
                    ir::CostTerm::Fixed(1.0),
                ];
                for arg in &a.args {
                    let ast::AnnArg::Named { name, value, span } = arg else {
                        problems.push(
                            Problem::error(
                                "mars::fn::bad_attribute",
                                "`@cost` takes named terms: batch_ms, item_ms, cores",
                            )
                            .label(a.span, "here"),
                        );
                        continue;
                    };
                    let k = match name.name.as_str() {
                        "batch_ms" => 0,
                        "item_ms" => 1,
                        "cores" => 2,
                        other => {
                            problems.push(
                                Problem::error(
                                    "mars::fn::bad_attribute",
                                    format!("`@cost` has no term `{other}`; its terms are batch_ms, item_ms, cores"),
                                )
                                .label(*span, "unknown term"),
                            );
                            continue;
                        }
                    };
                    terms[k] = match value {
                        ast::Value::Lit(l) => match l.kind {
                            ast::LitKind::Float(x) | ast::LitKind::Duration(x) => ir::CostTerm::Fixed(x),
                            ast::LitKind::Int(i) => ir::CostTerm::Fixed(i as f64),
                            _ => {
                                problems.push(
                                    Problem::error("mars::fn::bad_attribute", "a `@cost` term is a number or a numeric parameter")
                                        .label(l.span, "not a number"),
                                );
                                continue;
                            }
                        },
                        ast::Value::Name(p) => {
                            let param = p.segments.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(".");
                            let numeric = statics.iter().any(|s| {
                                s.name == param && matches!(s.ty, StaticType::Int | StaticType::Float | StaticType::Duration)
                            });
                            if !numeric {
                                problems.push(
                                    Problem::error(
                                        "mars::fn::bad_attribute",
                                        format!("`{param}` is not a numeric static parameter of `{}`", f.name.name),
                                    )
                                    .label(p.span, "not a parameter of this fn"),
                                );
                                continue;
                            }
                            ir::CostTerm::Param(param)
                        }
                    };
                }
                out.cost = Some(terms);
            }
            other => problems.push(
                Problem::error(
                    "mars::fn::bad_attribute",
                    format!("unknown fn attribute `@{other}`"),
                )
                .label(a.span, "not an attribute of fn declarations")
                .help("fn declarations take `@batchable` and `@cost(batch_ms = …, item_ms = …, cores = …)`"),
            ),
        }
    }
    out
}

fn lower_model(env: &Env, module: ModuleId, m: &ast::ModelItem, sink: &mut Sink) -> Option<Sig> {
    let mut problems = Vec::new();
    let consts = ConstScope {
        env,
        module,
        scope: None,
    };
    let mut ok = true;
    // The config: `arch` first, since it says which keys the others may be.
    let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
    let mut config_entries = Vec::new();
    for e in &m.entries {
        if let ast::ModelEntry::Config { key, value, .. } = e {
            if let Some(first) = seen.insert(&key.name, key.span) {
                problems.push(
                    Problem::error(
                        "mars::model::duplicate_key",
                        format!("the key `{}` is set twice", key.name),
                    )
                    .label(key.span, "set again here")
                    .label(first, "first set here"),
                );
                ok = false;
                continue;
            }
            config_entries.push((key, value));
        }
    }
    let arch_entry = config_entries.iter().find(|(k, _)| k.name == "arch");
    let arch: Option<&Arch> = match arch_entry {
        None => {
            problems.push(
                Problem::error(
                    "mars::model::missing_arch",
                    format!("the model `{}` does not say its architecture", m.name.name),
                )
                .label(m.name.span, "no `arch = \"…\"` key")
                .help(format!(
                    "add a line like `arch = \"{}\"`",
                    arch_names(env).first().copied().unwrap_or("transformer_lm")
                )),
            );
            None
        }
        Some((_, v)) => match consts.static_value(
            v,
            &StaticType::Text,
            "mars::model::key_type",
            "the key `arch`",
        ) {
            Err(p) => {
                problems.push(p);
                None
            }
            Ok(Literal::Text(name)) => match find_arch(env, &name) {
                Some(Some(a)) => Some(a),
                Some(None) => {
                    ok = false;
                    None
                }
                None => {
                    let mut p = Problem::error(
                        "mars::model::unknown_arch",
                        format!("unknown architecture `{name}`"),
                    )
                    .label(v.span(), "no arch of this name");
                    let names = arch_names(env);
                    if let Some(s) = did_you_mean(&name, names.iter().copied()) {
                        p = p.help(format!("did you mean `{s}`?"));
                    } else if !names.is_empty() {
                        p = p.help(format!("the architectures are: {}", names.join(", ")));
                    }
                    problems.push(p);
                    None
                }
            },
            Ok(_) => None,
        },
    };
    let mut config = BTreeMap::new();
    if let Some(arch) = arch {
        for (key, value) in &config_entries {
            if key.name == "arch" {
                continue;
            }
            let Some(k) = arch.keys.iter().find(|k| k.name == key.name) else {
                let mut p = Problem::error(
                    "mars::model::unknown_key",
                    format!(
                        "`{}` is not a key of the architecture `{}`",
                        key.name, arch.name
                    ),
                )
                .label(key.span, "unknown key");
                if let Some(s) = did_you_mean(&key.name, arch.keys.iter().map(|k| k.name.as_str()))
                {
                    p = p.help(format!("did you mean `{s}`?"));
                } else {
                    let names: Vec<&str> = arch.keys.iter().map(|k| k.name.as_str()).collect();
                    p = p.help(format!(
                        "the keys of `{}` are: {}",
                        arch.name,
                        names.join(", ")
                    ));
                }
                problems.push(p);
                continue;
            };
            match consts.static_value(
                value,
                &k.ty,
                "mars::model::key_type",
                &format!("the key `{}`", k.name),
            ) {
                Ok(l) => {
                    config.insert(k.name.clone(), l);
                }
                Err(p) => problems.push(p),
            }
        }
        for k in &arch.keys {
            if config.contains_key(&k.name) || seen.contains_key(k.name.as_str()) {
                continue;
            }
            match &k.default {
                KeyDefault::Value(l) => {
                    config.insert(k.name.clone(), l.clone());
                }
                KeyDefault::FromWeights => {}
                KeyDefault::Required => problems.push(
                    Problem::error(
                        "mars::model::missing_key",
                        format!(
                            "the model `{}` does not set the key `{}`",
                            m.name.name, k.name
                        ),
                    )
                    .label(m.name.span, format!("`{}` needs `{}`", arch.name, k.name))
                    .help(format!(
                        "add `{} = …` ({})",
                        k.name,
                        k.ty.describe()
                    )),
                ),
            }
        }
    }
    // Ports.
    let mut ports = Vec::new();
    let mut outputs = Vec::new();
    let mut in_names: BTreeMap<&str, Span> = BTreeMap::new();
    let mut out_names: BTreeMap<&str, Span> = BTreeMap::new();
    for e in &m.entries {
        if let ast::ModelEntry::Port { dir, name, ty, .. } = e {
            let names = if *dir == ast::PortDir::In {
                &mut in_names
            } else {
                &mut out_names
            };
            if let Some(first) = names.insert(&name.name, name.span) {
                problems.push(
                    Problem::error(
                        "mars::model::duplicate_port",
                        format!("two ports are named `{}`", name.name),
                    )
                    .label(name.span, "declared again here")
                    .label(first, "first declared here"),
                );
                continue;
            }
            let t = lower_type(ty, &[], &mut problems);
            if *dir == ast::PortDir::In {
                ports.push((name.name.clone(), t));
            } else {
                outputs.push((name.name.clone(), t));
            }
        }
    }
    if ports.is_empty() || outputs.is_empty() {
        let missing = if ports.is_empty() {
            "an `in`"
        } else {
            "an `out`"
        };
        problems.push(
            Problem::error(
                "mars::model::missing_port",
                format!("the model `{}` has no {} port", m.name.name, &missing[3..]),
            )
            .label(m.name.span, format!("needs {missing} line"))
            .help("declare ports as `in name: Type` and `out name: Type`"),
        );
    }
    let failed = !ok || !problems.is_empty() || arch.is_none();
    sink.extend(problems);
    if failed {
        return None;
    }
    let arch = arch.expect("checked above");
    let generates = config.get("generate") == Some(&Literal::Bool(true));
    Some(Sig {
        name: m.name.name.clone(),
        ports: ports
            .into_iter()
            .map(|(n, t)| (n, t.expect("lowered")))
            .collect(),
        statics: Vec::new(),
        outputs: outputs
            .into_iter()
            .map(|(n, t)| (n, t.expect("lowered")))
            .collect(),
        implementation: ir::Implementation::Model {
            arch: arch.name.clone(),
            config,
        },
        generates,
        is_model: true,
        gpu: arch.gpu,
        attributes: ir::DeclAttributes::default(),
    })
}

/// The arch named `name` in any module: `Some(None)` when it exists but had errors.
fn find_arch<'a>(env: &'a Env, name: &str) -> Option<Option<&'a Arch>> {
    // The user's file first, then the stdlib in module order.
    let order = std::iter::once(env.user).chain((0..env.modules.len()).filter(|&i| i != env.user));
    for m in order {
        if let Some((Entity::Arch(i), _)) = env.modules[m].items.get(name) {
            return Some(env.archs[*i].as_ref());
        }
    }
    None
}

fn arch_names(env: &Env) -> Vec<&str> {
    let mut names: Vec<&str> = env
        .modules
        .iter()
        .flat_map(|m| {
            m.items
                .iter()
                .filter(|(_, (e, _))| matches!(e, Entity::Arch(_)))
                .map(|(n, _)| n.as_str())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Pass 4: the user's scope: their own items plus what `use` brings in.
pub(crate) fn resolve_uses(env: &Env, user: &Parsed, sink: &mut Sink) -> Scope {
    sink.source = user.source.clone();
    let mut scope = Scope {
        names: env.modules[env.user].items.clone(),
    };
    let module_paths: Vec<&str> = env.module_by_path.keys().map(String::as_str).collect();
    for item in &user.ast.items {
        let ast::Item::Use(u) = item else { continue };
        let path = u.path.text();
        let Some(&module) = env.module_by_path.get(&path) else {
            // `use std.image.decode`: a path to an item, written without braces.
            if let Some((mpath, name)) = path.rsplit_once('.') {
                if let (Some(&module), None) = (env.module_by_path.get(mpath), &u.names) {
                    if let Some(&(entity, _)) = env.modules[module].items.get(name) {
                        bring(&mut scope, name, entity, u.path.last().span, sink);
                        continue;
                    }
                }
            }
            let mut p = Problem::error(
                "mars::resolve::unknown_module",
                format!("unknown module `{path}`"),
            )
            .label(u.path.span, "no such module");
            if let Some(s) = did_you_mean(&path, module_paths.iter().copied()) {
                p = p.help(format!("did you mean `{s}`?"));
            } else if !module_paths.is_empty() {
                p = p.help(format!("the modules are: {}", module_paths.join(", ")));
            }
            sink.push(p);
            continue;
        };
        match &u.names {
            None => {
                let alias = u.path.last();
                bring(
                    &mut scope,
                    &alias.name,
                    Entity::Module(module),
                    alias.span,
                    sink,
                );
            }
            Some(names) => {
                for n in names {
                    match env.modules[module].items.get(&n.name) {
                        Some(&(entity, _)) => bring(&mut scope, &n.name, entity, n.span, sink),
                        None => {
                            let mut p = Problem::error(
                                "mars::resolve::unknown_import",
                                format!("`{path}` has no item `{}`", n.name),
                            )
                            .label(n.span, "not declared there");
                            if let Some(s) = did_you_mean(
                                &n.name,
                                env.modules[module].items.keys().map(String::as_str),
                            ) {
                                p = p.help(format!("did you mean `{s}`?"));
                            } else {
                                let elsewhere = env.modules_declaring(&n.name);
                                if let Some(m) = elsewhere.first() {
                                    p = p.help(format!("`{}` is declared in `{m}`", n.name));
                                }
                            }
                            sink.push(p);
                        }
                    }
                }
            }
        }
    }
    scope
}

fn bring(scope: &mut Scope, name: &str, entity: Entity, span: Span, sink: &mut Sink) {
    if let Some((_, first)) = scope.names.get(name) {
        sink.push(
            Problem::error(
                "mars::resolve::duplicate_item",
                format!("`{name}` is already defined"),
            )
            .label(span, "imported here")
            .label(*first, "already defined here")
            .help("remove one, or write the other by its full path (`std.module.name`)"),
        );
        return;
    }
    scope.names.insert(name.to_string(), (entity, span));
}
