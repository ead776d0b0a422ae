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
    pub fn invalid(path: &str, line: Option<usize>, key: &str, message: impl Into<String>) -> LoadError {
        LoadError { path: path.to_string(), line, key: Some(key.to_string()), message: message.into() }
    }
}

/// Deserialize YAML, turning serde_yaml's error into a [`LoadError`] with its line.
pub fn load_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &str) -> Result<T, LoadError> {
    serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let msg = e.to_string();
        // serde_yaml prefixes messages with the dotted path to the field ("nodes.Seg.cpu: ...").
        let (key, message) = match msg.split_once(": ") {
            Some((k, rest)) if !k.contains(' ') => (Some(k.to_string()), rest.to_string()),
            _ => (None, msg),
        };
        LoadError { path: path.to_string(), line, key, message }
    })
}

/// The 1-based line of the first occurrence of `key:` as a YAML key whose ancestors are the
/// dotted prefixes of `dotted` in order (a best-effort locator for semantic errors, which serde
/// does not place). Returns `None` if the key is not found.
pub fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let mut from = 0usize;
    let mut found = None;
    for part in dotted.split('.') {
        let lines: Vec<&str> = text.lines().collect();
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(from) {
            let t = line.trim_start().trim_start_matches("- ").trim_start_matches('{').trim_start();
            if t.starts_with(&format!("{part}:")) || line.contains(&format!(" {part}:")) || line.contains(&format!("{{{part}:")) {
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
