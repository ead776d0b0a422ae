//! Problems: the errors and warnings of every phase, collected rather than thrown.
//!
//! Each [`Problem`] is a miette [`Diagnostic`] with a stable code (`mars::<phase>::<kind>`),
//! labelled spans in one source file, and an optional help line. [`Problems`] keeps them
//! sorted by file and position, so the order is deterministic. Rendering with
//! [`Problems::render`] uses a fixed width and no colour (golden files compare it byte for
//! byte); only `marsc` prints.

use std::fmt;
use std::sync::Arc;

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan,
};

use crate::SourceFile;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// The text of a file, shared by every problem that points into it.
pub type Source = Arc<NamedSource<String>>;

/// Make the shared source of a file, for [`Problem::in_source`].
pub fn source_of(file: &SourceFile) -> Source {
    Arc::new(NamedSource::new(&file.path, file.text.clone()))
}

/// One error or warning.
#[derive(Debug, Clone)]
pub struct Problem {
    pub severity: Severity,
    /// Stable code, `mars::<phase>::<kind>` (SPEC.md lists them all).
    pub code: &'static str,
    pub message: String,
    /// The first label is the primary one; problems sort by its position.
    pub labels: Vec<(SourceSpan, String)>,
    pub help: Option<String>,
    pub source: Option<Source>,
}

impl Problem {
    pub fn error(code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Error,
            code,
            message: message.into(),
            labels: Vec::new(),
            help: None,
            source: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(code, message)
        }
    }

    /// Add a labelled span (the first one added is the primary label).
    pub fn label(mut self, span: impl Into<SourceSpan>, text: impl Into<String>) -> Problem {
        self.labels.push((span.into(), text.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    /// Attach the file the spans point into.
    pub fn in_source(mut self, source: &Source) -> Problem {
        self.source = Some(source.clone());
        self
    }

    /// Attach the file the spans point into.
    pub fn in_file(self, file: &SourceFile) -> Problem {
        let source = source_of(file);
        self.in_source(&source)
    }

    /// The byte offset of the primary label (0 without labels).
    pub fn offset(&self) -> usize {
        self.labels.first().map(|(s, _)| s.offset()).unwrap_or(0)
    }

    /// The name of the file the problem points into (empty without one).
    pub fn file_name(&self) -> &str {
        self.source.as_ref().map(|s| s.name()).unwrap_or("")
    }

    fn sort_key(&self) -> (&str, usize, usize, &'static str, &str) {
        let len = self.labels.first().map(|(s, _)| s.len()).unwrap_or(0);
        (
            self.file_name(),
            self.offset(),
            len,
            self.code,
            &self.message,
        )
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source
            .as_ref()
            .map(|s| &**s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() || self.source.is_none() {
            return None;
        }
        Some(Box::new(self.labels.iter().enumerate().map(
            |(i, (span, text))| {
                let text = if text.is_empty() {
                    None
                } else {
                    Some(text.clone())
                };
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, *span)
                } else {
                    LabeledSpan::new_with_span(text, *span)
                }
            },
        )))
    }
}

/// A sink of problems, kept sorted by file and position.
#[derive(Debug, Clone, Default)]
pub struct Problems {
    items: Vec<Problem>,
    default_source: Option<Source>,
}

/// The width diagnostics are rendered at.
pub const RENDER_WIDTH: usize = 100;

impl Problems {
    pub fn new() -> Problems {
        Problems::default()
    }

    /// A sink that attaches `file` to every problem pushed without a source (the planner
    /// pushes problems that point into the user's file this way).
    pub fn for_file(file: &SourceFile) -> Problems {
        Problems {
            items: Vec::new(),
            default_source: Some(source_of(file)),
        }
    }

    /// Add a problem, keeping the order (file, position, code).
    pub fn push(&mut self, mut problem: Problem) {
        if problem.source.is_none() {
            problem.source = self.default_source.clone();
        }
        // Problems mostly arrive in order: appending is the common case.
        let in_order = self
            .items
            .last()
            .is_none_or(|last| last.sort_key() <= problem.sort_key());
        if in_order {
            self.items.push(problem);
            return;
        }
        let at = self
            .items
            .partition_point(|p| p.sort_key() <= problem.sort_key());
        self.items.insert(at, problem);
    }

    /// Move every problem of `other` in.
    pub fn extend(&mut self, other: Problems) {
        for p in other.items {
            self.push(p);
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|p| p.severity == Severity::Error)
    }

    pub fn has_warnings(&self) -> bool {
        self.items.iter().any(|p| p.severity == Severity::Warning)
    }

    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub fn warning_count(&self) -> usize {
        self.items
            .iter()
            .filter(|p| p.severity == Severity::Warning)
            .count()
    }

    /// Every problem rendered without colour at [`RENDER_WIDTH`] columns, each followed by a
    /// blank line. Past the first [`FULL_RENDERS`], problems are listed one per line
    /// (`path:line:col: code: message`): rendering a snippet costs a scan of its file.
    pub fn render(&self) -> String {
        visible_controls(&self.render_raw())
    }

    fn render_raw(&self) -> String {
        let mut out = String::new();
        for p in self.items.iter().take(FULL_RENDERS) {
            out.push_str(&render_problem(p));
            out.push('\n');
        }
        let rest = &self.items[self.items.len().min(FULL_RENDERS)..];
        if rest.is_empty() {
            return out;
        }
        out.push_str(&format!(
            "{} more problem{}:\n",
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ));
        let mut lines: std::collections::BTreeMap<String, Vec<usize>> =
            std::collections::BTreeMap::new();
        for p in rest {
            let kind = match p.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let at = match &p.source {
                Some(src) => {
                    let starts = lines.entry(src.name().to_string()).or_insert_with(|| {
                        let text = src.inner();
                        std::iter::once(0)
                            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                            .collect()
                    });
                    let offset = p.offset();
                    let line = starts.partition_point(|&s| s <= offset).max(1);
                    let col = src
                        .inner()
                        .get(starts[line - 1]..offset)
                        .map(|t| t.chars().count())
                        .unwrap_or(0)
                        + 1;
                    format!("{}:{line}:{col}: ", src.name())
                }
                None => String::new(),
            };
            out.push_str(&format!("{at}{kind}[{}]: {}\n", p.code, p.message));
        }
        out
    }
}

/// How many problems [`Problems::render`] shows with their source snippet.
pub const FULL_RENDERS: usize = 200;

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

/// One problem rendered without colour at [`RENDER_WIDTH`] columns.
pub fn render_problem(problem: &Problem) -> String {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(RENDER_WIDTH)
        .with_links(false)
        .with_urls(false);
    let mut out = String::new();
    if handler.render_report(&mut out, problem).is_err() {
        // Rendering only fails on a span outside its source, which is a bug of the phase
        // that made the problem: still show what it says.
        out = format!(
            "{}: {} [{}]\n",
            problem.file_name(),
            problem.message,
            problem.code
        );
    }
    out
}

/// `text` with every control character shown as a visible one of the same width, so that a
/// source cannot send escape sequences (ESC, OSC, bidi overrides) to the terminal through a
/// diagnostic: C0 controls and DEL become their Control Pictures (`␛` for ESC), C1 controls
/// and bidi overrides become `�`. Newlines and tabs stay.
pub fn visible_controls(text: &str) -> String {
    if !text.chars().any(is_hidden_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
            '\u{7f}' => '\u{2421}',
            c if is_hidden_control(c) => '\u{fffd}',
            c => c,
        })
        .collect()
}

fn is_hidden_control(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The closest of `candidates` to `name`, if one is close enough to suggest: one edit away,
/// or similar by Jaro-Winkler (ties go to the alphabetically first).
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let mut best: Option<((usize, u64), &str)> = None;
    for c in candidates {
        if c == name {
            continue;
        }
        let c_lower = c.to_lowercase();
        let edits = strsim::osa_distance(&lower, &c_lower);
        let score = strsim::jaro_winkler(&lower, &c_lower);
        let close = (edits <= 1 && lower.len() >= 2) || score >= 0.8;
        if !close {
            continue;
        }
        // Fewer edits first, then the higher score.
        let key = (edits, ((1.0 - score) * 1e9) as u64);
        if best.is_none_or(|(k, b)| key < k || (key == k && c < b)) {
            best = Some((key, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_render_visibly() {
        assert_eq!(
            visible_controls("a\u{1b}]0;x\u{7}b\n\tc"),
            "a\u{241b}]0;x\u{2407}b\n\tc"
        );
        assert_eq!(
            visible_controls("\u{9b}\u{202e}\u{7f}"),
            "\u{fffd}\u{fffd}\u{2421}"
        );
        let file = SourceFile {
            path: "a.mars".into(),
            text: "let x\u{1b}[31m = 1\n".into(),
        };
        let mut ps = Problems::for_file(&file);
        ps.push(Problem::error("mars::test::esc", "bad \u{1b}[2J").label(Span(4, 6), "here"));
        let out = ps.render();
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(out.contains("\u{241b}[31m"), "{out}");
    }

    #[test]
    fn problems_sort_by_position_and_render_with_location() {
        let file = SourceFile {
            path: "a.mars".into(),
            text: "let x = 1\nlet y = 2\n".into(),
        };
        let mut ps = Problems::for_file(&file);
        ps.push(Problem::error("mars::test::second", "second").label(Span(14, 1), "here"));
        ps.push(
            Problem::warning("mars::test::first", "first")
                .label(Span(4, 1), "there")
                .help("do this"),
        );
        let codes: Vec<_> = ps.iter().map(|p| p.code).collect();
        assert_eq!(codes, ["mars::test::first", "mars::test::second"]);
        assert!(ps.has_errors() && ps.has_warnings());
        let text = ps.render();
        assert!(text.contains("[a.mars:1:5]"), "{text}");
        assert!(text.contains("[a.mars:2:5]"), "{text}");
        assert!(text.contains("help: do this"), "{text}");
    }

    #[allow(non_snake_case)]
    fn Span(start: usize, len: usize) -> SourceSpan {
        SourceSpan::new(start.into(), len)
    }

    #[test]
    fn many_problems_render_in_short_past_the_first() {
        let text: String = (0..FULL_RENDERS + 2)
            .map(|i| format!("line{i}\n"))
            .collect();
        let file = SourceFile {
            path: "m.mars".into(),
            text: text.clone(),
        };
        let mut ps = Problems::for_file(&file);
        for i in 0..FULL_RENDERS + 2 {
            let at = text.find(&format!("line{i}\n")).expect("line");
            ps.push(
                Problem::error("mars::test::many", format!("problem {i}"))
                    .label(Span(at + 2, 1), "here"),
            );
        }
        let out = ps.render();
        assert!(out.contains("2 more problems:\n"), "{out}");
        assert!(
            out.ends_with(&format!(
                "m.mars:{}:3: error[mars::test::many]: problem {}\n",
                FULL_RENDERS + 2,
                FULL_RENDERS + 1
            )),
            "{out}"
        );
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("decod", ["decode", "encode", "crop"]),
            Some("decode")
        );
        assert_eq!(did_you_mean("zzz", ["decode", "encode"]), None);
    }
}
