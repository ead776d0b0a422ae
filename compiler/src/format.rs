//! `marsc fmt`: print a file back in canonical layout, comments kept.
//!
//! The layout: one item, entry or statement per line, two spaces of indent inside blocks,
//! single spaces inside a line; within a run of consecutive lines of one kind (no blank line
//! or comment between them) the `=` of model keys, the types of ports and arch keys, the
//! `=` of statements and the annotations line up. Blank lines are kept (at most one) and
//! always surround models, archs and pipelines. A comment stays on its own line or at the end
//! of its line (keeping its distance from the code); a comment written inside a broken-up
//! item moves to the line before it. Formatting is idempotent.

use crate::diagnostics::Problems;
use crate::syntax::ast::*;
use crate::SourceFile;

/// The canonical layout of `file`, or its syntax problems.
pub fn format_file(file: &SourceFile) -> Result<String, Problems> {
    let (ast, problems) = crate::parse(file);
    if problems.has_errors() {
        return Err(problems);
    }
    Ok(format_ast(&file.text, &ast))
}

/// The canonical layout of a parsed file (`text` is the source it was parsed from).
pub fn format_ast(text: &str, file: &File) -> String {
    let mut p = Printer {
        text,
        comments: &file.comments,
        next_comment: 0,
        out: String::new(),
        prev_end: None,
    };
    let mut prev_block = false;
    for item in &file.items {
        let block = matches!(item, Item::Model(_) | Item::Arch(_) | Item::Pipeline(_));
        let force = (block || prev_block) && p.prev_end.is_some();
        // A block's inner comments are printed inside it; a one-line item's go before it.
        let flush_to = if block {
            item.span().start
        } else {
            item.span().end
        };
        let had_comments = p.leading(flush_to, "", force);
        p.blank_before(item.span().start, force && !had_comments);
        match item {
            Item::Use(u) => p.line("", u.span, &use_text(u)),
            Item::Const(c) => p.line(
                "",
                c.span,
                &format!("const {} = {}", c.name.name, c.value.raw),
            ),
            Item::Fn(f) => p.line("", f.span, &fn_text(f)),
            Item::Model(m) => p.model(m),
            Item::Arch(a) => p.arch(a),
            Item::Pipeline(pl) => p.pipeline(pl),
        }
        prev_block = block;
    }
    let _ = p.leading(text.len() + 1, "", false);
    let mut out = p.out;
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

struct Printer<'a> {
    text: &'a str,
    comments: &'a [Comment],
    next_comment: usize,
    out: String,
    /// The source offset where the last printed thing ended.
    prev_end: Option<usize>,
}

/// One line of a block: its span and the pieces that alignment pads.
struct Row {
    span: Span,
    /// Padded to the widest `head` of its run.
    head: String,
    /// Follows the head.
    body: String,
    /// Annotations, lined up in a column across the run.
    tail: String,
    /// Which rows may line up with each other.
    class: u8,
}

impl Printer<'_> {
    fn has_blank_line(&self, from: usize, to: usize) -> bool {
        if from >= to || to > self.text.len() {
            return false;
        }
        let between = &self.text[from..to];
        let mut newlines = 0;
        for c in between.chars() {
            match c {
                '\n' => {
                    newlines += 1;
                    if newlines >= 2 {
                        return true;
                    }
                }
                c if c.is_whitespace() => {}
                _ => newlines = 0,
            }
        }
        false
    }

    /// A blank line before something at `start`, if the source had one (or `force`).
    fn blank_before(&mut self, start: usize, force: bool) {
        let Some(prev) = self.prev_end else { return };
        let at_block_start = self.out.ends_with("{\n");
        if (force || self.has_blank_line(prev, start))
            && !self.out.ends_with("\n\n")
            && !self.out.is_empty()
            && !at_block_start
        {
            self.out.push('\n');
        }
    }

    /// Print, each on its own line, the comments that start before `before`. Returns whether
    /// there were any.
    fn leading(&mut self, before: usize, indent: &str, force_blank_first: bool) -> bool {
        let mut first = true;
        while let Some(c) = self.comments.get(self.next_comment) {
            if c.span.start >= before {
                break;
            }
            self.blank_before(c.span.start, first && force_blank_first);
            first = false;
            self.out.push_str(indent);
            self.out.push_str(&c.text);
            self.out.push('\n');
            self.prev_end = Some(c.span.end);
            self.next_comment += 1;
        }
        !first
    }

    /// The comment that ends the line where `end` is, if any, with its distance from the code.
    fn trailing(&mut self, end: usize) -> Option<(usize, &str)> {
        let c = self.comments.get(self.next_comment)?;
        if c.span.start < end || self.text[end..c.span.start].contains('\n') {
            return None;
        }
        self.next_comment += 1;
        Some(((c.span.start - end).max(1), c.text.as_str()))
    }

    fn line(&mut self, indent: &str, span: Span, code: &str) {
        self.out.push_str(indent);
        self.out.push_str(code);
        self.finish_line(span);
    }

    fn finish_line(&mut self, span: Span) {
        let mut end = span.end;
        if let Some((gap, text)) = self.trailing(span.end) {
            let text = text.to_string();
            self.out.push_str(&" ".repeat(gap));
            self.out.push_str(&text);
            end = self.comments[self.next_comment - 1].span.end;
        }
        self.out.push('\n');
        self.prev_end = Some(end);
    }

    /// Whether the rows `a` and `b` (consecutive) are in one alignment run.
    fn same_run(&self, a: &Row, b: &Row) -> bool {
        if a.class != b.class || self.has_blank_line(a.span.end, b.span.start) {
            return false;
        }
        // A comment between them that is not the trailing comment of `a` breaks the run.
        let line_end = self.text[a.span.end..]
            .find('\n')
            .map(|n| a.span.end + n)
            .unwrap_or(self.text.len());
        !self
            .comments
            .iter()
            .any(|c| c.span.start >= line_end && c.span.start < b.span.end)
    }

    /// Print the rows of a block, aligned run by run.
    fn rows(&mut self, rows: &[Row], indent: &str) {
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            while j < rows.len() && self.same_run(&rows[j - 1], &rows[j]) {
                j += 1;
            }
            let run = &rows[i..j];
            let head_w = run
                .iter()
                .map(|r| r.head.chars().count())
                .max()
                .unwrap_or(0);
            let code_w = run
                .iter()
                .filter(|r| !r.tail.is_empty())
                .map(|r| head_w + r.body.chars().count())
                .max()
                .unwrap_or(0);
            for r in run {
                let _ = self.leading(r.span.end, indent, false);
                self.blank_before(r.span.start, false);
                let mut code = format!("{:<head_w$}{}", r.head, r.body);
                if !r.tail.is_empty() {
                    let pad = code_w + 3 - code.chars().count();
                    code.push_str(&" ".repeat(pad));
                    code.push_str(&r.tail);
                }
                self.line(indent, r.span, code.trim_end());
            }
            i = j;
        }
    }

    fn close(&mut self, end: Span) {
        let _ = self.leading(end.start, "  ", false);
        self.line("", end, "}");
    }

    fn open(&mut self, header: &str, span_start: usize) {
        self.out.push_str(header);
        self.out.push('\n');
        self.prev_end = Some(span_start);
    }

    fn model(&mut self, m: &ModelItem) {
        self.open(&format!("model {} {{", m.name.name), m.name.span.end);
        let has_out = m.entries.iter().any(|e| {
            matches!(
                e,
                ModelEntry::Port {
                    dir: PortDir::Out,
                    ..
                }
            )
        });
        let rows: Vec<Row> = m
            .entries
            .iter()
            .map(|e| match e {
                ModelEntry::Config { key, value, span } => Row {
                    span: *span,
                    head: key.name.clone(),
                    body: format!(" = {}", value_text(value)),
                    tail: String::new(),
                    class: 0,
                },
                ModelEntry::Port {
                    dir,
                    name,
                    ty,
                    span,
                } => {
                    let dir = match (dir, has_out) {
                        (PortDir::In, true) => "in  ",
                        (PortDir::In, false) => "in ",
                        (PortDir::Out, _) => "out ",
                    };
                    Row {
                        span: *span,
                        head: format!("{dir}{}:", name.name),
                        body: format!(" {}", type_text(ty)),
                        tail: String::new(),
                        class: 1,
                    }
                }
            })
            .collect();
        self.rows(&rows, "  ");
        self.close(m.end);
    }

    fn arch(&mut self, a: &ArchItem) {
        let gpu = if a.gpu.is_some() { "@gpu " } else { "" };
        self.open(&format!("{gpu}arch {} {{", a.name.name), a.name.span.end);
        let rows: Vec<Row> = a
            .keys
            .iter()
            .map(|k| {
                let default = match &k.default {
                    ArchDefault::Required => String::new(),
                    ArchDefault::Value(v) => format!(" = {}", value_text(v)),
                    ArchDefault::FromWeights(_) => " from weights".to_string(),
                };
                Row {
                    span: k.span,
                    head: format!("{}:", k.name.name),
                    body: format!(" {}{default}", param_type_text(&k.ty)),
                    tail: String::new(),
                    class: 0,
                }
            })
            .collect();
        self.rows(&rows, "  ");
        self.close(a.end);
    }

    fn pipeline(&mut self, p: &PipelineItem) {
        let inputs: Vec<String> = p
            .inputs
            .iter()
            .map(|i| match &i.default {
                Some(d) => format!("{}: {} = {}", i.name.name, type_text(&i.ty), value_text(d)),
                None => format!("{}: {}", i.name.name, type_text(&i.ty)),
            })
            .collect();
        let header = format!(
            "pipeline {}({}) -> ({}) {{",
            p.name.name,
            inputs.join(", "),
            ports_text(&p.outputs)
        );
        self.open(&header, p.outputs_span.end);
        let rows: Vec<Row> = p
            .body
            .iter()
            .map(|s| match s {
                Stmt::Let {
                    targets,
                    expr,
                    annotations,
                    span,
                } => {
                    let names = match targets {
                        LetTargets::Single(i) => i.name.clone(),
                        LetTargets::Tuple(v, _) => format!(
                            "({})",
                            v.iter()
                                .map(|i| i.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    Row {
                        span: *span,
                        head: format!("let {names}"),
                        body: format!(" = {}", expr_text(expr)),
                        tail: annotations_text(annotations),
                        class: 0,
                    }
                }
                Stmt::Output {
                    name,
                    expr,
                    annotations,
                    span,
                } => Row {
                    span: *span,
                    head: name.name.clone(),
                    body: format!(" = {}", expr_text(expr)),
                    tail: annotations_text(annotations),
                    class: 1,
                },
                Stmt::Slo {
                    metric,
                    op,
                    value,
                    span,
                } => Row {
                    span: *span,
                    head: format!("slo {} {} {}", metric.text(), op.text(), value.raw),
                    body: String::new(),
                    tail: String::new(),
                    class: 2,
                },
            })
            .collect();
        self.rows(&rows, "  ");
        self.close(p.end);
    }
}

fn use_text(u: &UseItem) -> String {
    match &u.names {
        None => format!("use {}", u.path.text()),
        Some(names) => {
            let names: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
            format!("use {}.{{{}}}", u.path.text(), names.join(", "))
        }
    }
}

fn ports_text(ports: &[PortParam]) -> String {
    let ps: Vec<String> = ports
        .iter()
        .map(|p| format!("{}: {}", p.name.name, type_text(&p.ty)))
        .collect();
    ps.join(", ")
}

fn fn_text(f: &FnItem) -> String {
    let gpu = if f.gpu.is_some() { "@gpu " } else { "" };
    let mut s = format!("{gpu}fn {}", f.name.name);
    if !f.type_params.is_empty() {
        let ts: Vec<&str> = f.type_params.iter().map(|t| t.name.as_str()).collect();
        s.push_str(&format!("<{}>", ts.join(", ")));
    }
    s.push('(');
    s.push_str(&ports_text(&f.ports));
    if let Some(statics) = f.statics.as_ref().filter(|s| !s.is_empty()) {
        let ss: Vec<String> = statics
            .iter()
            .map(|st| match &st.default {
                Some(d) => format!(
                    "{}: {} = {}",
                    st.name.name,
                    param_type_text(&st.ty),
                    value_text(d)
                ),
                None => format!("{}: {}", st.name.name, param_type_text(&st.ty)),
            })
            .collect();
        s.push_str("; ");
        s.push_str(&ss.join(", "));
    }
    s.push_str(") -> ");
    match &f.outputs {
        FnOutputs::Single(t) => s.push_str(&type_text(t)),
        FnOutputs::Named(outs, _) => s.push_str(&format!("({})", ports_text(outs))),
    }
    match &f.body {
        FnBody::Builtin(l) => s.push_str(&format!(" = builtin {}", l.raw)),
        FnBody::Exec(l) => s.push_str(&format!(" = exec {}", l.raw)),
    }
    if !f.attributes.is_empty() {
        s.push(' ');
        s.push_str(&annotations_text(&f.attributes));
    }
    s
}

fn type_text(t: &TypeExpr) -> String {
    if t.args.is_empty() {
        return t.name.name.clone();
    }
    let args: Vec<String> = t
        .args
        .iter()
        .map(|a| match a {
            TypeArg::Type(t) => type_text(t),
            TypeArg::Dims(dims, _) => {
                let ds: Vec<String> = dims
                    .iter()
                    .map(|d| match d {
                        DimExpr::Size(n, _) => n.to_string(),
                        DimExpr::Sym(i) => i.name.clone(),
                    })
                    .collect();
                format!("[{}]", ds.join(", "))
            }
        })
        .collect();
    format!("{}<{}>", t.name.name, args.join(", "))
}

fn param_type_text(t: &ParamType) -> String {
    match t {
        ParamType::Symbols(syms, _) => syms
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        ParamType::Type(t) => type_text(t),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Lit(l) => l.raw.clone(),
        Value::Name(p) => p.text(),
    }
}

fn expr_text(e: &Expr) -> String {
    match e {
        Expr::Lit(l) => l.raw.clone(),
        Expr::Name(p) => p.text(),
        Expr::Call(c) => {
            let args: Vec<String> = c
                .args
                .iter()
                .map(|a| match a {
                    Arg::Positional(e) => expr_text(e),
                    Arg::Named { name, value, .. } => {
                        format!("{} = {}", name.name, expr_text(value))
                    }
                })
                .collect();
            format!("{}({})", c.callee.text(), args.join(", "))
        }
    }
}

fn annotations_text(anns: &[Annotation]) -> String {
    let parts: Vec<String> = anns
        .iter()
        .map(|a| {
            if a.args.is_empty() && !a_has_parens(a) {
                return format!("@{}", a.name.name);
            }
            let args: Vec<String> = a
                .args
                .iter()
                .map(|arg| match arg {
                    AnnArg::Positional(v) => value_text(v),
                    AnnArg::Named { name, value, .. } => {
                        format!("{} = {}", name.name, value_text(value))
                    }
                })
                .collect();
            format!("@{}({})", a.name.name, args.join(", "))
        })
        .collect();
    parts.join(" ")
}

/// `@x()` keeps its parentheses; `@x` has none.
fn a_has_parens(a: &Annotation) -> bool {
    a.span.end > a.name.span.end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(text: &str) -> String {
        format_file(&SourceFile {
            path: "t.mars".into(),
            text: text.into(),
        })
        .expect("parses")
    }

    #[test]
    fn the_language_sketch_is_nearly_canonical() {
        let example = include_str!("testdata/sketch.mars");
        let out = fmt(example);
        assert_eq!(out, example);
    }

    #[test]
    fn formatting_is_idempotent_and_keeps_comments() {
        let messy = "// head\nuse   std.text.{ lower ,normalize}\n\n\n\nconst  A=1 // one\nmodel M{arch=\"crnn_tiny\"\n// inside\nweights=\"w\" in x:Image out y : Text}\npipeline p( x:Text )->( y:Text ){\nlet a=lower( x )@device( cpu )   // trailing\nlet bb = normalize(\n  // moved\n  a)\n y=bb\n\n\nslo latency.p99<300ms\n// last in block\n}\n// tail\n";
        let once = fmt(messy);
        assert_eq!(fmt(&once), once);
        for c in [
            "// head",
            "// one",
            "// inside",
            "// trailing",
            "// moved",
            "// last in block",
            "// tail",
        ] {
            assert!(once.contains(c), "{c} lost:\n{once}");
        }
        assert!(once.contains("  let a = lower(x)   @device(cpu)   // trailing\n  // moved\n  let bb = normalize(a)\n"), "{once}");
        assert!(once.contains("model M {\n  arch = \"crnn_tiny\"\n  // inside\n  weights = \"w\"\n  in  x: Image\n  out y: Text\n}\n"), "{once}");
        assert!(once.contains("\n\n  slo latency.p99 < 300ms\n"), "{once}");
    }

    #[test]
    fn empty_and_comment_only_files() {
        assert_eq!(fmt(""), "");
        assert_eq!(
            fmt("// only\n\n\n// comments\n"),
            "// only\n\n// comments\n"
        );
    }
}
