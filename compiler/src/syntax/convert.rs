//! pest pairs → AST. Spans are shifted by the offset of the item in its file.

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::{Pair, Pairs};
use pest::Parser;

use super::ast::*;
use super::{MarsParser, Rule};
use crate::diagnostics::Problem;

/// Parse the item at the start of `text` (which starts at byte `offset` of its file).
/// Returns the item and the file offset where it ends.
pub(super) fn parse_item(text: &str, offset: usize) -> Result<(Item, usize), Problem> {
    let pairs = match MarsParser::parse(Rule::item_entry, text) {
        Ok(p) => p,
        Err(_) => {
            // Parse again collecting the tokens that were expected: slower, so only on errors.
            pest::set_error_detail(true);
            let err = MarsParser::parse(Rule::item_entry, text).err();
            return Err(match err {
                Some(e) => syntax_problem(&e, text, offset),
                None => Problem::error("mars::syntax::unexpected", "syntax error")
                    .label(Span::new(offset, offset), "here"),
            });
        }
    };
    let entry = pairs.into_iter().next().expect("item_entry matched");
    let c = Conv { offset };
    let item_pair = entry.into_inner().next().expect("item_entry holds an item");
    let end = offset + item_pair.as_span().end();
    Ok((c.item(item_pair), end))
}

pub(super) fn parse_type(text: &str) -> Result<TypeExpr, Problem> {
    match MarsParser::parse(Rule::type_expr, text) {
        Ok(mut p) => {
            let pair = p.next().expect("type_expr matched");
            if pair.as_span().end() != text.trim_end().len() {
                let at = pair.as_span().end();
                return Err(Problem::error(
                    "mars::syntax::unexpected",
                    "unexpected text after the type",
                )
                .label(Span::new(at, text.len()), "here"));
            }
            Ok(Conv { offset: 0 }.type_expr(pair))
        }
        Err(e) => Err(syntax_problem(&e, text, 0)),
    }
}

fn describe_rule(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident | Rule::path => "a name",
        Rule::literal | Rule::value => "a value",
        Rule::int | Rule::dim_size => "an integer",
        Rule::float => "a number",
        Rule::string => "a string",
        Rule::duration => "a duration",
        Rule::rate => "a rate",
        Rule::bool => "`true` or `false`",
        Rule::type_expr => "a type",
        Rule::item | Rule::item_entry => {
            "an item (`use`, `const`, `model`, `arch`, `fn`, `pipeline`)"
        }
        Rule::use_item => "`use`",
        Rule::const_item => "`const`",
        Rule::model_item => "`model`",
        Rule::arch_item => "`arch`",
        Rule::gpu_mark => "`@gpu`",
        Rule::fn_item => "`fn`",
        Rule::pipeline_item => "`pipeline`",
        Rule::let_stmt => "`let`",
        Rule::output_stmt => "an output assignment",
        Rule::slo_stmt => "`slo`",
        Rule::call => "a call",
        Rule::annotation => "an annotation",
        Rule::slo_op => "a comparison (`<`, `<=`, `>`, `>=`)",
        Rule::port_dir => "`in` or `out`",
        Rule::block_end => "`}`",
        Rule::EOI => "end of file",
        Rule::symbol_set => "a set of symbols",
        Rule::from_weights => "`from weights`",
        Rule::named_arg | Rule::ann_named | Rule::config_entry => "`name = value`",
        Rule::port_decl => "a port (`in name: Type`)",
        Rule::type_params => "type parameters",
        Rule::named_outputs => "`(name: Type, …)`",
        Rule::builtin_body => "`builtin`",
        Rule::exec_body => "`exec`",
        Rule::let_tuple => "`(name, …)`",
        Rule::dims => "`[dims]`",
        Rule::type_args => "`<…>`",
        Rule::use_names => "`.{…}`",
        _ => return None,
    })
}

fn syntax_problem(e: &pest::error::Error<Rule>, text: &str, offset: usize) -> Problem {
    let mut pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<String> = Vec::new();
    match e.parse_attempts() {
        // The tokens that would have let the parse go on at the furthest position reached.
        Some(attempts) => {
            pos = attempts.max_position;
            for t in attempts.expected_tokens() {
                // pest does not export its token type; its `Display` is the token itself
                // (`a..z` for a range of characters).
                let token = t.to_string();
                let described = match token.as_str() {
                    "a..z" | "A..Z" | "_" => "a name".to_string(),
                    "0..9" => "a number".to_string(),
                    "BUILTIN_RULE" | "//" => continue,
                    t if t.trim().is_empty() || (t.len() == 4 && t.get(1..3) == Some("..")) => {
                        continue
                    }
                    t => format!("`{t}`"),
                };
                expected.push(described);
            }
        }
        None => {
            if let ErrorVariant::ParsingError { positives, .. } = &e.variant {
                expected.extend(
                    positives
                        .iter()
                        .filter_map(|r| describe_rule(*r))
                        .map(str::to_string),
                );
            }
        }
    }
    expected.sort();
    expected.dedup();
    let rest = &text[pos.min(text.len())..];
    let found_len = token_len(rest);
    let message = if rest.is_empty() {
        "unexpected end of file".to_string()
    } else {
        format!("unexpected `{}`", &rest[..found_len])
    };
    let label = match expected.len() {
        0 if rest.is_empty() => "the file ends here".to_string(),
        0 => "not expected here".to_string(),
        1 => format!("expected {}", expected[0]),
        _ => {
            let (last, first) = expected.split_last().expect("two or more");
            format!("expected {} or {}", first.join(", "), last)
        }
    };
    let at = offset + pos;
    let problem = Problem::error("mars::syntax::unexpected", message)
        .label(Span::new(at, at + found_len), label);
    if rest.trim().is_empty() {
        problem.help("something opened above is not closed: check every `(`, `[`, `<` and `{`")
    } else {
        problem
    }
}

/// The length of the token at the start of `rest`: a word, or one character.
fn token_len(rest: &str) -> usize {
    let word = rest
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    if word > 0 {
        word
    } else {
        rest.chars().next().map(char::len_utf8).unwrap_or(0)
    }
}

struct Conv {
    offset: usize,
}

impl Conv {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        // pest's implicit whitespace can leave the layout after a trailing repetition
        // (`path`'s `("." ~ ident)*`) inside a rule's span: cut it off.
        let end = s.start() + content_len(p.as_str());
        Span::new(self.offset + s.start(), self.offset + end)
    }

    /// The span of a leading `@gpu`, consumed if present.
    fn gpu_mark<'i>(&self, inner: &mut std::iter::Peekable<Pairs<'i, Rule>>) -> Option<Span> {
        inner
            .next_if(|p| p.as_rule() == Rule::gpu_mark)
            .map(|p| self.span(&p))
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        debug_assert_eq!(p.as_rule(), Rule::ident);
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn path(&self, p: Pair<Rule>) -> Path {
        let span = self.span(&p);
        Path {
            segments: p.into_inner().map(|i| self.ident(i)).collect(),
            span,
        }
    }

    fn item(&self, p: Pair<Rule>) -> Item {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::use_item => {
                let mut inner = p.into_inner();
                let path = self.path(inner.next().expect("use path"));
                let names = inner
                    .next()
                    .map(|n| n.into_inner().map(|i| self.ident(i)).collect());
                Item::Use(UseItem { path, names, span })
            }
            Rule::const_item => {
                let mut inner = p.into_inner();
                let name = self.ident(inner.next().expect("const name"));
                let value = self.literal(inner.next().expect("const value"));
                Item::Const(ConstItem { name, value, span })
            }
            Rule::model_item => {
                let mut inner = p.into_inner();
                let name = self.ident(inner.next().expect("model name"));
                let mut entries = Vec::new();
                let mut end = span;
                for e in inner {
                    let espan = self.span(&e);
                    match e.as_rule() {
                        Rule::config_entry => {
                            let mut i = e.into_inner();
                            let key = self.ident(i.next().expect("key"));
                            let value = self.value(i.next().expect("value"));
                            entries.push(ModelEntry::Config {
                                key,
                                value,
                                span: espan,
                            });
                        }
                        Rule::port_decl => {
                            let mut i = e.into_inner();
                            let dir = if i.next().expect("dir").as_str() == "in" {
                                PortDir::In
                            } else {
                                PortDir::Out
                            };
                            let name = self.ident(i.next().expect("port name"));
                            let ty = self.type_expr(i.next().expect("port type"));
                            entries.push(ModelEntry::Port {
                                dir,
                                name,
                                ty,
                                span: espan,
                            });
                        }
                        Rule::block_end => end = espan,
                        r => unreachable!("model entry {r:?}"),
                    }
                }
                Item::Model(ModelItem {
                    name,
                    entries,
                    span,
                    end,
                })
            }
            Rule::arch_item => {
                let mut inner = p.into_inner().peekable();
                let gpu = self.gpu_mark(&mut inner);
                let name = self.ident(inner.next().expect("arch name"));
                let mut keys = Vec::new();
                let mut end = span;
                for k in inner {
                    let kspan = self.span(&k);
                    if k.as_rule() == Rule::block_end {
                        end = kspan;
                        continue;
                    }
                    let mut i = k.into_inner();
                    let name = self.ident(i.next().expect("key name"));
                    let ty = self.param_type(i.next().expect("key type"));
                    let default = match i.next() {
                        None => ArchDefault::Required,
                        Some(d) if d.as_rule() == Rule::from_weights => {
                            ArchDefault::FromWeights(self.span(&d))
                        }
                        Some(d) => ArchDefault::Value(self.value(d)),
                    };
                    keys.push(ArchKey {
                        name,
                        ty,
                        default,
                        span: kspan,
                    });
                }
                Item::Arch(ArchItem {
                    gpu,
                    name,
                    keys,
                    span,
                    end,
                })
            }
            Rule::fn_item => {
                let mut inner = p.into_inner().peekable();
                let gpu = self.gpu_mark(&mut inner);
                let name = self.ident(inner.next().expect("fn name"));
                let mut type_params = Vec::new();
                let mut ports = Vec::new();
                let mut statics = None;
                let mut outputs = None;
                let mut body = None;
                let mut attributes = Vec::new();
                for part in inner {
                    match part.as_rule() {
                        Rule::type_params => {
                            type_params = part.into_inner().map(|i| self.ident(i)).collect()
                        }
                        Rule::port_params => {
                            ports = part.into_inner().map(|pp| self.port_param(pp)).collect()
                        }
                        Rule::static_params => {
                            statics = Some(
                                part.into_inner()
                                    .map(|sp| {
                                        let sspan = self.span(&sp);
                                        let mut i = sp.into_inner();
                                        let name = self.ident(i.next().expect("static name"));
                                        let ty = self.param_type(i.next().expect("static type"));
                                        let default = i.next().map(|v| self.value(v));
                                        StaticParam {
                                            name,
                                            ty,
                                            default,
                                            span: sspan,
                                        }
                                    })
                                    .collect(),
                            )
                        }
                        Rule::named_outputs => {
                            let ospan = self.span(&part);
                            outputs = Some(FnOutputs::Named(
                                part.into_inner().map(|o| self.port_param(o)).collect(),
                                ospan,
                            ))
                        }
                        Rule::type_expr => outputs = Some(FnOutputs::Single(self.type_expr(part))),
                        Rule::builtin_body => {
                            body = Some(FnBody::Builtin(
                                self.literal_of(part.into_inner().next().expect("id")),
                            ))
                        }
                        Rule::exec_body => {
                            body = Some(FnBody::Exec(
                                self.literal_of(part.into_inner().next().expect("command")),
                            ))
                        }
                        Rule::annotation => attributes.push(self.annotation(part)),
                        r => unreachable!("fn part {r:?}"),
                    }
                }
                Item::Fn(FnItem {
                    gpu,
                    name,
                    type_params,
                    ports,
                    statics,
                    outputs: outputs.expect("the grammar requires outputs"),
                    body: body.expect("the grammar requires a body"),
                    attributes,
                    span,
                })
            }
            Rule::pipeline_item => {
                let mut inner = p.into_inner();
                let name = self.ident(inner.next().expect("pipeline name"));
                let inputs = inner
                    .next()
                    .expect("inputs")
                    .into_inner()
                    .map(|ip| {
                        let ispan = self.span(&ip);
                        let mut i = ip.into_inner();
                        let name = self.ident(i.next().expect("input name"));
                        let ty = self.type_expr(i.next().expect("input type"));
                        let default = i.next().map(|v| self.value(v));
                        PipelineInput {
                            name,
                            ty,
                            default,
                            span: ispan,
                        }
                    })
                    .collect();
                let outs = inner.next().expect("outputs");
                let outputs_span = self.span(&outs);
                let outputs = outs.into_inner().map(|o| self.port_param(o)).collect();
                let mut body = Vec::new();
                let mut end = span;
                for s in inner {
                    if s.as_rule() == Rule::block_end {
                        end = self.span(&s);
                    } else {
                        body.push(self.stmt(s));
                    }
                }
                Item::Pipeline(PipelineItem {
                    name,
                    inputs,
                    outputs,
                    outputs_span,
                    body,
                    span,
                    end,
                })
            }
            r => unreachable!("item {r:?}"),
        }
    }

    fn port_param(&self, p: Pair<Rule>) -> PortParam {
        let span = self.span(&p);
        let mut i = p.into_inner();
        let name = self.ident(i.next().expect("port name"));
        let ty = self.type_expr(i.next().expect("port type"));
        PortParam { name, ty, span }
    }

    fn param_type(&self, p: Pair<Rule>) -> ParamType {
        match p.as_rule() {
            Rule::symbol_set => {
                let span = self.span(&p);
                ParamType::Symbols(p.into_inner().map(|i| self.ident(i)).collect(), span)
            }
            _ => ParamType::Type(self.type_expr(p)),
        }
    }

    pub(super) fn type_expr(&self, p: Pair<Rule>) -> TypeExpr {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().expect("type name"));
        let mut args = Vec::new();
        if let Some(targs) = inner.next() {
            for a in targs.into_inner() {
                match a.as_rule() {
                    Rule::dims => {
                        let dspan = self.span(&a);
                        let dims = a
                            .into_inner()
                            .map(|d| match d.as_rule() {
                                Rule::dim_size => match d.as_str().parse::<u64>() {
                                    Ok(n) => DimExpr::Size(n, self.span(&d)),
                                    // Too large for a size: the checker reports it as a symbol
                                    // that is not one.
                                    Err(_) => DimExpr::Sym(Ident {
                                        name: d.as_str().to_string(),
                                        span: self.span(&d),
                                    }),
                                },
                                _ => DimExpr::Sym(self.ident(d)),
                            })
                            .collect();
                        args.push(TypeArg::Dims(dims, dspan));
                    }
                    _ => args.push(TypeArg::Type(self.type_expr(a))),
                }
            }
        }
        TypeExpr { name, args, span }
    }

    fn literal(&self, p: Pair<Rule>) -> Lit {
        debug_assert_eq!(p.as_rule(), Rule::literal);
        self.literal_of(p.into_inner().next().expect("literal holds one token"))
    }

    /// A literal from its token pair (`int`, `string`, …).
    fn literal_of(&self, p: Pair<Rule>) -> Lit {
        let raw = p.as_str().to_string();
        let span = self.span(&p);
        let kind = match p.as_rule() {
            // An integer too large for i64 becomes a float; the checker reports where an Int
            // was needed.
            Rule::int => raw
                .parse::<i64>()
                .map(LitKind::Int)
                .unwrap_or_else(|_| LitKind::Float(raw.parse().unwrap_or(f64::INFINITY))),
            Rule::float => LitKind::Float(raw.parse().unwrap_or(f64::INFINITY)),
            Rule::bool => LitKind::Bool(raw == "true"),
            Rule::string => LitKind::Text(unescape(&raw[1..raw.len() - 1])),
            Rule::duration => {
                let (num, scale) = if let Some(n) = raw.strip_suffix("ms") {
                    (n, 1.0)
                } else if let Some(n) = raw.strip_suffix("us") {
                    (n, 0.001)
                } else {
                    (raw.strip_suffix('s').unwrap_or(&raw), 1000.0)
                };
                LitKind::Duration(num.parse::<f64>().unwrap_or(f64::INFINITY) * scale)
            }
            Rule::rate => {
                LitKind::Rate(raw.trim_end_matches("/s").parse().unwrap_or(f64::INFINITY))
            }
            r => unreachable!("literal {r:?}"),
        };
        Lit { kind, raw, span }
    }

    fn value(&self, p: Pair<Rule>) -> Value {
        let inner = p.into_inner().next().expect("value holds one");
        match inner.as_rule() {
            Rule::literal => Value::Lit(self.literal(inner)),
            _ => Value::Name(self.path(inner)),
        }
    }

    fn stmt(&self, p: Pair<Rule>) -> Stmt {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::let_stmt => {
                let mut inner = p.into_inner();
                let t = inner.next().expect("let target");
                let targets = match t.as_rule() {
                    Rule::let_tuple => {
                        let tspan = self.span(&t);
                        LetTargets::Tuple(t.into_inner().map(|i| self.ident(i)).collect(), tspan)
                    }
                    _ => LetTargets::Single(self.ident(t)),
                };
                let expr = self.expr(inner.next().expect("let expr"));
                let annotations = inner.map(|a| self.annotation(a)).collect();
                Stmt::Let {
                    targets,
                    expr,
                    annotations,
                    span,
                }
            }
            Rule::output_stmt => {
                let mut inner = p.into_inner();
                let name = self.ident(inner.next().expect("output name"));
                let expr = self.expr(inner.next().expect("output expr"));
                let annotations = inner.map(|a| self.annotation(a)).collect();
                Stmt::Output {
                    name,
                    expr,
                    annotations,
                    span,
                }
            }
            Rule::slo_stmt => {
                let mut inner = p.into_inner();
                let metric = self.path(inner.next().expect("metric"));
                let op = match inner.next().expect("op").as_str() {
                    "<" => SloOp::Lt,
                    "<=" => SloOp::Le,
                    ">" => SloOp::Gt,
                    _ => SloOp::Ge,
                };
                let value = self.literal(inner.next().expect("slo value"));
                Stmt::Slo {
                    metric,
                    op,
                    value,
                    span,
                }
            }
            r => unreachable!("statement {r:?}"),
        }
    }

    fn expr(&self, p: Pair<Rule>) -> Expr {
        match p.as_rule() {
            Rule::call => {
                let span = self.span(&p);
                let mut inner = p.into_inner();
                let callee = self.path(inner.next().expect("callee"));
                let args = inner
                    .next()
                    .expect("call args")
                    .into_inner()
                    .map(|a| match a.as_rule() {
                        Rule::named_arg => {
                            let aspan = self.span(&a);
                            let mut i = a.into_inner();
                            let name = self.ident(i.next().expect("arg name"));
                            let value = self.expr(i.next().expect("arg value"));
                            Arg::Named {
                                name,
                                value,
                                span: aspan,
                            }
                        }
                        _ => Arg::Positional(self.expr(a)),
                    })
                    .collect();
                Expr::Call(Call { callee, args, span })
            }
            Rule::literal => Expr::Lit(self.literal(p)),
            Rule::path => Expr::Name(self.path(p)),
            r => unreachable!("expression {r:?}"),
        }
    }

    fn annotation(&self, p: Pair<Rule>) -> Annotation {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next().expect("annotation name"));
        let args = inner
            .next()
            .map(|args| {
                args.into_inner()
                    .map(|a| match a.as_rule() {
                        Rule::ann_named => {
                            let aspan = self.span(&a);
                            let mut i = a.into_inner();
                            let name = self.ident(i.next().expect("arg name"));
                            let value = self.value(i.next().expect("arg value"));
                            AnnArg::Named {
                                name,
                                value,
                                span: aspan,
                            }
                        }
                        _ => AnnArg::Positional(self.value(a)),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Annotation { name, args, span }
    }
}

/// The length of `s` without trailing whitespace and `//` comments.
fn content_len(s: &str) -> usize {
    let mut end = s.trim_end().len();
    loop {
        let line_start = s[..end].rfind('\n').map(|n| n + 1).unwrap_or(0);
        match comment_start(&s[line_start..end]) {
            Some(c) => end = s[..line_start + c].trim_end().len(),
            None => return end,
        }
    }
}

/// Where a `//` comment starts in one line, outside string literals.
fn comment_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Resolve the escapes of a string literal: `\"`, `\\`, `\n`, `\t`; any other escaped
/// character stands for itself.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}
