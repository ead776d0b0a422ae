//! Loading errors that name the file, the line and the key.

use std::fmt;

/// A file that could not be loaded, with where and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct LoadError {
    pub path: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// The key (dotted path) at fault, where known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl LoadError {
    pub fn invalid(
        path: &str,
        line: Option<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> LoadError {
        LoadError {
            path: path.to_string(),
            line,
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
}

/// Deserialize YAML, turning serde_yaml's error into a [`LoadError`] with its line.
/// A byte-order mark is skipped; a file too large or nested too deep is refused before
/// parsing ([`crate::yaml::precheck`]).
pub fn load_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &str) -> Result<T, LoadError> {
    let text = crate::yaml::strip_bom(text);
    if let Err((line, message)) = crate::yaml::precheck(text) {
        return Err(LoadError {
            path: path.to_string(),
            line,
            key: None,
            message,
        });
    }
    serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let msg = e.to_string();
        // serde_yaml prefixes messages with the dotted path to the field ("nodes.Seg.cpu: ...").
        let (key, message) = match msg.split_once(": ") {
            Some((k, rest)) if !k.contains(' ') => (Some(k.to_string()), rest.to_string()),
            _ => (None, msg),
        };
        LoadError {
            path: path.to_string(),
            line,
            key,
            message,
        }
    })
}

/// The 1-based line of a key given as its path of segments from the root (`["nodes",
/// "std.bench.delay", "cpu", "latency_ms"]`; a number selects an item of a sequence, as in
/// `["workers", "1", "cpus"]`). Segments may contain dots. Where the full path is not found the
/// line of the deepest segment found is returned (`None` when not even the first is), so an
/// error can still point at the closest enclosing key. Handles block mappings and sequences,
/// and flow mappings on one line (`cpu: {batch: [1], latency_ms: [3]}`).
pub fn find_key_path(text: &str, path: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let is_content = |l: &str| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with('#')
    };
    // The block being searched: lines (from, to) and the indentation its children exceed.
    let (mut from, mut to, mut parent_indent): (usize, usize, isize) = (0, lines.len(), -1);
    // The line of the last segment found, and the text after it on that line (for flow maps).
    let mut found: Option<usize> = None;
    let mut rest_of_line: Option<String> = None;
    for seg in path {
        // A flow mapping on the parent's own line.
        if let Some(rest) = &rest_of_line {
            if let Some(pos) = flow_key(rest, seg) {
                rest_of_line = Some(rest[pos..].to_string());
                continue;
            }
        }
        let children: Vec<usize> = (from..to)
            .filter(|&i| is_content(lines[i]) && indent_of(lines[i]) as isize > parent_indent)
            .collect();
        let Some(&first) = children.first() else {
            return found;
        };
        let child_indent = indent_of(lines[first]);
        let hit = if let Ok(n) = seg.parse::<usize>() {
            children
                .iter()
                .filter(|&&i| {
                    indent_of(lines[i]) == child_indent && lines[i].trim_start().starts_with('-')
                })
                .nth(n)
                .copied()
        } else {
            children.iter().copied().find(|&i| {
                let t = lines[i].trim_start();
                let t = t.strip_prefix("- ").unwrap_or(t);
                (indent_of(lines[i]) == child_indent || lines[i].trim_start().starts_with("- "))
                    && (t.starts_with(&format!("{seg}:")) || t.starts_with(&format!("\"{seg}\":")))
            })
        };
        let Some(i) = hit else { return found };
        found = Some(i + 1);
        let t = lines[i].trim_start();
        let after_key = match t.find(&format!("{seg}:")) {
            Some(p) if !seg.chars().all(|c| c.is_ascii_digit()) => {
                t[p + seg.len() + 1..].to_string()
            }
            _ => t.trim_start_matches('-').to_string(),
        };
        rest_of_line = Some(after_key);
        // The block of this key: following lines indented deeper than the key's own line
        // (or than its `- ` marker, for a sequence item).
        let own_indent = if t.starts_with("- ") && seg.parse::<usize>().is_err() {
            indent_of(lines[i]) + 2
        } else {
            indent_of(lines[i])
        };
        let mut end = i + 1;
        while end < to && (!is_content(lines[end]) || indent_of(lines[end]) > own_indent) {
            end += 1;
        }
        if seg.parse::<usize>().is_ok() {
            // An item's keys sit at its indentation + 2, the first on the `- ` line itself.
            from = i + 1;
            parent_indent = indent_of(lines[i]) as isize;
            to = end;
        } else {
            from = i + 1;
            parent_indent = own_indent as isize;
            to = end;
        }
    }
    found
}

/// Where `key:` starts as a key of a flow mapping in `s` (after `{` or `,`).
fn flow_key(s: &str, key: &str) -> Option<usize> {
    let pat = format!("{key}:");
    let mut start = 0;
    while let Some(p) = s[start..].find(&pat) {
        let at = start + p;
        let before = s[..at].trim_end();
        if before.is_empty() || before.ends_with('{') || before.ends_with(',') {
            return Some(at + pat.len());
        }
        start = at + pat.len();
    }
    None
}

/// The 1-based line of the first occurrence of `key:` as a YAML key whose ancestors are the
/// dotted prefixes of `dotted` in order (a best-effort locator for semantic errors, which serde
/// does not place). Returns `None` if the key is not found. Prefer [`find_key_path`], which
/// allows dots inside a segment.
pub fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let mut from = 0usize;
    let mut found = None;
    for part in dotted.split('.') {
        let lines: Vec<&str> = text.lines().collect();
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(from) {
            let t = line
                .trim_start()
                .trim_start_matches("- ")
                .trim_start_matches('{')
                .trim_start();
            if t.starts_with(&format!("{part}:"))
                || line.contains(&format!(" {part}:"))
                || line.contains(&format!("{{{part}:"))
            {
                hit = Some(i);
                break;
            }
        }
        match hit {
            Some(i) => {
                from = i;
                found = Some(i + 1);
            }
            None => return found,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = "mars_profile: 1
nodes:
  std.bench.delay:
    cpu: {batch: [1, 2], latency_ms: [3, 5]}
  Seg:
    cpu:
      batch: [1]
      latency_ms: [40]
    gpu: {batch: [1, 8], latency_ms: [4, 9]}
fanout:
  words: 6.0
";

    #[test]
    fn key_paths_find_block_and_flow_keys() {
        assert_eq!(find_key_path(PROFILE, &["nodes"]), Some(2));
        assert_eq!(
            find_key_path(PROFILE, &["nodes", "std.bench.delay"]),
            Some(3)
        );
        assert_eq!(
            find_key_path(PROFILE, &["nodes", "std.bench.delay", "cpu", "latency_ms"]),
            Some(4)
        );
        assert_eq!(
            find_key_path(PROFILE, &["nodes", "Seg", "cpu", "latency_ms"]),
            Some(8)
        );
        assert_eq!(
            find_key_path(PROFILE, &["nodes", "Seg", "gpu", "batch"]),
            Some(9)
        );
        assert_eq!(find_key_path(PROFILE, &["fanout", "words"]), Some(11));
        // Not there: the closest enclosing key.
        assert_eq!(find_key_path(PROFILE, &["nodes", "Missing"]), Some(2));
        assert_eq!(
            find_key_path(PROFILE, &["nodes", "std.bench.delay", "gpu"]),
            Some(3)
        );
        assert_eq!(find_key_path(PROFILE, &["absent"]), None);
    }

    #[test]
    fn key_paths_index_sequences() {
        let target = "mars_target: 1
workers:
  - name: w0
    cpus: 4
  - name: w1
    cpus: 0
    gpus:
      - {name: g0, memory_gb: 16}
      - name: g1
        memory_gb: -1
";
        assert_eq!(find_key_path(target, &["workers", "0", "cpus"]), Some(4));
        assert_eq!(find_key_path(target, &["workers", "1", "name"]), Some(5));
        assert_eq!(find_key_path(target, &["workers", "1", "cpus"]), Some(6));
        assert_eq!(
            find_key_path(target, &["workers", "1", "gpus", "0", "memory_gb"]),
            Some(8)
        );
        assert_eq!(
            find_key_path(target, &["workers", "1", "gpus", "1", "memory_gb"]),
            Some(10)
        );
    }
}
