//! The untyped, owned AST of one `.mars` file. Every node carries its byte span in the file.

use miette::SourceSpan;

/// A byte range `start..end` in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
    pub fn len(self) -> usize {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

impl From<Span> for SourceSpan {
    fn from(s: Span) -> SourceSpan {
        SourceSpan::new(s.start.into(), s.len())
    }
}

/// A name as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `a.b.c`.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub segments: Vec<Ident>,
    pub span: Span,
}

impl Path {
    /// The path as written, segments joined by `.`.
    pub fn text(&self) -> String {
        let names: Vec<&str> = self.segments.iter().map(|s| s.name.as_str()).collect();
        names.join(".")
    }
    /// The single name of a one-segment path.
    pub fn single(&self) -> Option<&Ident> {
        match self.segments.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
    pub fn last(&self) -> &Ident {
        self.segments
            .last()
            .expect("the grammar gives every path one segment at least")
    }
}

/// A whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
    /// `//` comments, in source order (the formatter puts them back).
    pub comments: Vec<Comment>,
}

/// A `//` comment: `span` covers the `//` and the text up to the end of the line.
#[derive(Debug, Clone, PartialEq)]
pub struct Comment {
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Use(UseItem),
    Const(ConstItem),
    Model(ModelItem),
    Arch(ArchItem),
    Fn(FnItem),
    Pipeline(PipelineItem),
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Use(i) => i.span,
            Item::Const(i) => i.span,
            Item::Model(i) => i.span,
            Item::Arch(i) => i.span,
            Item::Fn(i) => i.span,
            Item::Pipeline(i) => i.span,
        }
    }
    /// The name an item defines (`use` defines none of its own).
    pub fn name(&self) -> Option<&Ident> {
        match self {
            Item::Use(_) => None,
            Item::Const(i) => Some(&i.name),
            Item::Model(i) => Some(&i.name),
            Item::Arch(i) => Some(&i.name),
            Item::Fn(i) => Some(&i.name),
            Item::Pipeline(i) => Some(&i.name),
        }
    }
}

/// `use std.image.{decode, crop}` (`names` is `Some`) or `use std.image`.
#[derive(Debug, Clone, PartialEq)]
pub struct UseItem {
    pub path: Path,
    pub names: Option<Vec<Ident>>,
    pub span: Span,
}

/// `const NAME = literal`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConstItem {
    pub name: Ident,
    pub value: Lit,
    pub span: Span,
}

/// A literal, with its text as written (the formatter prints it back unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct Lit {
    pub kind: LitKind,
    pub raw: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LitKind {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    /// In milliseconds.
    Duration(f64),
    /// Per second.
    Rate(f64),
}

/// A value of a static parameter, model key or annotation argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Lit(Lit),
    /// A constant or a bare symbol (`int8`).
    Name(Path),
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Lit(l) => l.span,
            Value::Name(p) => p.span,
        }
    }
}

/// `model Name { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelItem {
    pub name: Ident,
    pub entries: Vec<ModelEntry>,
    pub span: Span,
    /// The closing brace.
    pub end: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelEntry {
    Config {
        key: Ident,
        value: Value,
        span: Span,
    },
    Port {
        dir: PortDir,
        name: Ident,
        ty: TypeExpr,
        span: Span,
    },
}

impl ModelEntry {
    pub fn span(&self) -> Span {
        match self {
            ModelEntry::Config { span, .. } | ModelEntry::Port { span, .. } => *span,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortDir {
    In,
    Out,
}

/// `arch name { key: Type = default … }`: the config schema of a model architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchItem {
    /// `@gpu`: the architecture has a GPU implementation.
    pub gpu: Option<Span>,
    pub name: Ident,
    pub keys: Vec<ArchKey>,
    pub span: Span,
    pub end: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArchKey {
    pub name: Ident,
    pub ty: ParamType,
    pub default: ArchDefault,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArchDefault {
    /// The key must be given.
    Required,
    /// `= value`.
    Value(Value),
    /// `from weights`: read from the weights file when not given.
    FromWeights(Span),
}

/// The type of a static parameter or a model key.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    /// `none | int8 | int4`.
    Symbols(Vec<Ident>, Span),
    Type(TypeExpr),
}

impl ParamType {
    pub fn span(&self) -> Span {
        match self {
            ParamType::Symbols(_, s) => *s,
            ParamType::Type(t) => t.span,
        }
    }
}

/// A type as written: `Text`, `List<Box>`, `Tensor<f32, [1, H, W]>`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeExpr {
    pub name: Ident,
    pub args: Vec<TypeArg>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TypeArg {
    Type(TypeExpr),
    Dims(Vec<DimExpr>, Span),
}

#[derive(Debug, Clone, PartialEq)]
pub enum DimExpr {
    Size(u64, Span),
    Sym(Ident),
}

/// `fn name<T>(ports; statics) -> outputs = builtin "id" | exec "cmd"`.
#[derive(Debug, Clone, PartialEq)]
pub struct FnItem {
    /// `@gpu`: the fn has a GPU implementation.
    pub gpu: Option<Span>,
    pub name: Ident,
    pub type_params: Vec<Ident>,
    pub ports: Vec<PortParam>,
    /// `None` when the declaration has no `;`.
    pub statics: Option<Vec<StaticParam>>,
    pub outputs: FnOutputs,
    pub body: FnBody,
    /// Attributes after the body (`@batchable`, `@cost(…)`).
    pub attributes: Vec<Annotation>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortParam {
    pub name: Ident,
    pub ty: TypeExpr,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StaticParam {
    pub name: Ident,
    pub ty: ParamType,
    pub default: Option<Value>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FnOutputs {
    /// `-> T`: one output, named `out`.
    Single(TypeExpr),
    /// `-> (a: T, b: U)`.
    Named(Vec<PortParam>, Span),
}

#[derive(Debug, Clone, PartialEq)]
pub enum FnBody {
    Builtin(Lit),
    Exec(Lit),
}

/// `pipeline name(inputs) -> (outputs) { statements }`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineItem {
    pub name: Ident,
    pub inputs: Vec<PipelineInput>,
    pub outputs: Vec<PortParam>,
    pub outputs_span: Span,
    pub body: Vec<Stmt>,
    pub span: Span,
    pub end: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineInput {
    pub name: Ident,
    pub ty: TypeExpr,
    pub default: Option<Value>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `let x = expr @ann…` or `let (a, b) = expr @ann…`.
    Let {
        targets: LetTargets,
        expr: Expr,
        annotations: Vec<Annotation>,
        span: Span,
    },
    /// `name = expr @ann…`: assigns a pipeline output.
    Output {
        name: Ident,
        expr: Expr,
        annotations: Vec<Annotation>,
        span: Span,
    },
    /// `slo metric op value`.
    Slo {
        metric: Path,
        op: SloOp,
        value: Lit,
        span: Span,
    },
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Let { span, .. } | Stmt::Output { span, .. } | Stmt::Slo { span, .. } => *span,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LetTargets {
    Single(Ident),
    Tuple(Vec<Ident>, Span),
}

impl LetTargets {
    pub fn names(&self) -> &[Ident] {
        match self {
            LetTargets::Single(i) => std::slice::from_ref(i),
            LetTargets::Tuple(v, _) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SloOp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl SloOp {
    pub fn text(self) -> &'static str {
        match self {
            SloOp::Lt => "<",
            SloOp::Le => "<=",
            SloOp::Gt => ">",
            SloOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Call(Call),
    Lit(Lit),
    Name(Path),
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Call(c) => c.span,
            Expr::Lit(l) => l.span,
            Expr::Name(p) => p.span,
        }
    }
}

/// `f(a, b, key = value)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub callee: Path,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Positional(Expr),
    Named {
        name: Ident,
        value: Expr,
        span: Span,
    },
}

/// `@name(args)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub name: Ident,
    pub args: Vec<AnnArg>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AnnArg {
    Positional(Value),
    Named {
        name: Ident,
        value: Value,
        span: Span,
    },
}
