//! The model store (SPEC §4.8): pretrained models named by the stdlib's manifest
//! (`stdlib/models/manifest.yaml`), fetched on request by [`Store::pull`] into a cache folder
//! (`$MARS_MODELS`, default `~/.cache/mars/models`), one folder per model.
//!
//! `weights = "model:NAME"` in a model block names a stored model's first file,
//! `model:NAME/FILE` another of its files. [`Store::resolve`] finds it without fetching
//! anything: a model that is not pulled is an error that names `marsc models pull NAME`.
//! `marsc compile` records the sha256 of every weights file in the plan (model config key
//! `weights_sha256`, see [`record_hashes`]); the runtime refuses a file whose hash changed
//! ([`open_weights`]).

mod pull;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use pull::{pull_with, PullOptions};

/// The manifest's text, embedded.
pub const MANIFEST_YAML: &str = include_str!("../../models/manifest.yaml");

/// The prefix of a store reference in a `weights` key.
pub const MODEL_PREFIX: &str = "model:";

/// The plan's model config key holding `{file: "sha256:…"}` for every weights file.
pub const HASH_KEY: &str = "weights_sha256";

/// The manifest: every model the store knows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub mars_models: u32,
    pub models: Vec<ModelEntry>,
}

/// One model of the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub task: String,
    /// The `arch` a model block uses to run it.
    pub arch: String,
    pub format: String,
    pub license: String,
    /// Whether the license is an OSI open-source license.
    pub open_source: bool,
    pub files: Vec<FileEntry>,
}

/// One stored file of a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    /// Hex sha256 of the stored file.
    pub sha256: String,
    /// Where its bytes come from, concatenated in order.
    pub from: Vec<Source>,
}

/// A piece of a stored file: a file inside a wheel, or a member of a zip inside a wheel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub package: String,
    pub version: String,
    pub path: String,
    #[serde(default)]
    pub member: Option<String>,
}

impl ModelEntry {
    /// Every `package==version` this model is cut from, each once, in order.
    pub fn wheels(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for s in self.files.iter().flat_map(|f| &f.from) {
            let w = (s.package.clone(), s.version.clone());
            if !out.contains(&w) {
                out.push(w);
            }
        }
        out
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

impl Manifest {
    /// The embedded manifest.
    pub fn embedded() -> Result<Manifest, StoreError> {
        Manifest::parse(MANIFEST_YAML, "stdlib/models/manifest.yaml")
    }

    pub fn parse(text: &str, origin: &str) -> Result<Manifest, StoreError> {
        let m: Manifest = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}", l.line()))
                .unwrap_or_default();
            StoreError(format!("{origin}{at}: {e}"))
        })?;
        if m.mars_models != 1 {
            return Err(StoreError(format!(
                "{origin}: `mars_models` is {}, this build reads 1",
                m.mars_models
            )));
        }
        for model in &m.models {
            if model.files.is_empty() {
                return Err(StoreError(format!(
                    "{origin}: model `{}` lists no files",
                    model.name
                )));
            }
        }
        Ok(m)
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    /// `name` is not in the manifest: an error listing the names that are.
    pub fn unknown(&self, name: &str) -> StoreError {
        let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        StoreError(format!(
            "no model `{name}` in the model store's manifest; it has: {} (`marsc models list`)",
            names.join(", ")
        ))
    }
}

/// A store error: one message naming the model, file or command concerned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Whether a model is in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Every file is there with its manifest size.
    Pulled,
    /// Nothing is there.
    Missing,
    /// Some files are missing or have the wrong size: named.
    Incomplete(String),
}

/// A store folder.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
    pub manifest: Manifest,
}

/// A resolved `model:` reference.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The file named (the model's first file unless `model:NAME/FILE`).
    pub path: PathBuf,
    pub model: ModelEntry,
    /// Every file of the model: its name, path and manifest hash (`sha256:…`).
    pub files: Vec<(String, PathBuf, String)>,
}

impl Store {
    /// The store at `$MARS_MODELS`, else `$HOME/.cache/mars/models`.
    pub fn from_env() -> Result<Store, StoreError> {
        Ok(Store {
            root: default_root(),
            manifest: Manifest::embedded()?,
        })
    }

    pub fn at(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        Ok(Store {
            root: root.into(),
            manifest: Manifest::embedded()?,
        })
    }

    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn status(&self, model: &ModelEntry) -> Status {
        let dir = self.model_dir(&model.name);
        let mut bad = Vec::new();
        let mut present = 0;
        for f in &model.files {
            match std::fs::metadata(dir.join(&f.name)) {
                Ok(m) if m.len() == f.bytes => present += 1,
                Ok(m) => bad.push(format!("{} has {} bytes, not {}", f.name, m.len(), f.bytes)),
                Err(_) => bad.push(format!("{} is missing", f.name)),
            }
        }
        if bad.is_empty() {
            Status::Pulled
        } else if present == 0 && !dir.exists() {
            Status::Missing
        } else {
            Status::Incomplete(bad.join("; "))
        }
    }

    /// Resolve `model:NAME` or `model:NAME/FILE` (with or without the prefix) to a stored
    /// file. Never fetches: a model not pulled is an error naming the command that pulls it.
    pub fn resolve(&self, reference: &str) -> Result<Resolved, StoreError> {
        let rest = reference.strip_prefix(MODEL_PREFIX).unwrap_or(reference);
        let (name, file) = match rest.split_once('/') {
            Some((n, f)) => (n, Some(f)),
            None => (rest, None),
        };
        let model = self
            .manifest
            .get(name)
            .ok_or_else(|| self.manifest.unknown(name))?;
        let chosen = match file {
            None => &model.files[0],
            Some(f) => model.files.iter().find(|e| e.name == f).ok_or_else(|| {
                let names: Vec<&str> = model.files.iter().map(|e| e.name.as_str()).collect();
                StoreError(format!(
                    "model `{name}` has no file `{f}`; its files: {}",
                    names.join(", ")
                ))
            })?,
        };
        match self.status(model) {
            Status::Pulled => {}
            Status::Missing => {
                return Err(StoreError(format!(
                    "model `{name}` is not in the model store ({}); fetch it with `marsc models pull {name}`",
                    self.root.display()
                )))
            }
            Status::Incomplete(why) => {
                return Err(StoreError(format!(
                    "model `{name}` in the model store ({}) is incomplete ({why}); fetch it again with `marsc models pull {name}`",
                    self.root.display()
                )))
            }
        }
        let dir = self.model_dir(name);
        Ok(Resolved {
            path: dir.join(&chosen.name),
            files: model
                .files
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        dir.join(&f.name),
                        format!("sha256:{}", f.sha256),
                    )
                })
                .collect(),
            model: model.clone(),
        })
    }

    /// Pull a model with `pip` from the environment (see [`pull_with`]).
    pub fn pull(&self, name: &str) -> Result<PullReport, StoreError> {
        pull_with(self, name, &PullOptions::from_env())
    }
}

/// What [`Store::pull`] did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub dir: PathBuf,
    /// False when every file was already there with its hash.
    pub fetched: bool,
    pub bytes: u64,
}

/// `$MARS_MODELS`, else `$HOME/.cache/mars/models` (`./.mars-models` without a home).
pub fn default_root() -> PathBuf {
    if let Some(p) = std::env::var_os("MARS_MODELS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache/mars/models"),
        None => PathBuf::from(".mars-models"),
    }
}

/// `sha256:<hex>` of a file's bytes, read in pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex_digest(h))
}

fn hex_digest(h: Sha256) -> String {
    let mut s = String::from("sha256:");
    for b in h.finalize() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The weights files a model config names, each with its path: for `model:NAME` every file of
/// the stored model (keyed by file name), for a plain path that file (keyed by the path as
/// written, resolved against `base`).
pub fn weights_files(
    store: &Store,
    weights: &str,
    base: &Path,
) -> Result<Vec<(String, PathBuf)>, StoreError> {
    if weights.starts_with(MODEL_PREFIX) {
        let r = store.resolve(weights)?;
        Ok(r.files.into_iter().map(|(n, p, _)| (n, p)).collect())
    } else {
        Ok(vec![(weights.to_string(), base.join(weights))])
    }
}

/// What `marsc compile` records for a model config: `{file: "sha256:…"}` of every weights
/// file, hashed now. A stored model's file whose hash differs from the manifest is an error
/// (it was changed after the pull). A plain-path file that does not exist yet records
/// nothing (it may be made after compiling) and returns a note saying so.
pub fn record_hashes(
    store: &Store,
    weights: &str,
    base: &Path,
) -> Result<(BTreeMap<String, String>, Option<String>), StoreError> {
    let mut out = BTreeMap::new();
    if weights.starts_with(MODEL_PREFIX) {
        let r = store.resolve(weights)?;
        for (name, path, expected) in r.files {
            let got = sha256_file(&path)
                .map_err(|e| StoreError(format!("cannot read {}: {e}", path.display())))?;
            if got != expected {
                return Err(StoreError(format!(
                    "{} has {got}, but the manifest says {expected}: it was changed after the pull; fetch it again with `marsc models pull {}`",
                    path.display(),
                    r.model.name
                )));
            }
            out.insert(name, got);
        }
        return Ok((out, None));
    }
    let path = base.join(weights);
    match sha256_file(&path) {
        Ok(h) => {
            out.insert(weights.to_string(), h);
            Ok((out, None))
        }
        Err(_) => Ok((
            out,
            Some(format!(
                "weights `{weights}` did not exist at compile time: the plan records no hash for it"
            )),
        )),
    }
}

/// Record the weights hashes of every model node of a plan (config key [`HASH_KEY`], see
/// [`record_hashes`]); `base` is the folder relative weights paths resolve against (the
/// source's). Returns notes for the plan. The error names the node.
pub fn record_plan_hashes(
    plan: &mut mars_plan::Plan,
    base: &Path,
) -> Result<Vec<String>, StoreError> {
    let store = Store::from_env()?;
    let mut notes = Vec::new();
    for node in &mut plan.nodes {
        let id = node.id.clone();
        let Some(model) = node.implementation.model.as_mut() else {
            continue;
        };
        let Some(serde_json::Value::String(weights)) = model.config.get("weights") else {
            continue;
        };
        let (hashes, note) = record_hashes(&store, weights, base)
            .map_err(|e| StoreError(format!("node `{id}`: {e}")))?;
        notes.extend(note.map(|n| format!("node `{id}`: {n}")));
        if !hashes.is_empty() {
            let map = hashes
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            model
                .config
                .insert(HASH_KEY.to_string(), serde_json::Value::Object(map));
        }
    }
    Ok(notes)
}

/// Check files against the hashes a plan recorded (`{file: "sha256:…"}`); files the map does
/// not name are not checked. The error names the file and both hashes.
pub fn check_hashes(
    files: &[(String, PathBuf)],
    recorded: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    for (name, path) in files {
        let Some(want) = recorded.get(name) else {
            continue;
        };
        let got = sha256_file(path)
            .map_err(|e| StoreError(format!("cannot read weights {}: {e}", path.display())))?;
        if &got != want {
            return Err(StoreError(format!(
                "weights file {} has {got}, but the plan was compiled with {want}: the file changed since `marsc compile`; recompile the plan or restore the file",
                path.display()
            )));
        }
    }
    Ok(())
}

/// A model node's weights, opened for loading: the file its `weights` key names (through the
/// store for `model:` references), the folder holding it (a stored model's other files are
/// there), after checking every file against the hashes the plan recorded.
#[derive(Debug, Clone)]
pub struct OpenedWeights {
    pub path: PathBuf,
    pub dir: PathBuf,
}

/// Resolve and check the `weights` key of a plan node's model config (see [`OpenedWeights`]).
pub fn open_weights(node: &mars_plan::PlanNode, base: &Path) -> Result<OpenedWeights, StoreError> {
    let model = node
        .implementation
        .model
        .as_ref()
        .ok_or_else(|| StoreError(format!("node `{}` is not a model", node.id)))?;
    let fail = |m: String| StoreError(format!("node `{}`: {m}", node.id));
    let weights = match model.config.get("weights") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(v) => return Err(fail(format!("model key `weights` must be text, got `{v}`"))),
        None => return Err(fail("model key `weights` is missing".into())),
    };
    let recorded: BTreeMap<String, String> = match model.config.get(HASH_KEY) {
        None | Some(serde_json::Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            fail(format!(
                "model key `{HASH_KEY}` must map file names to hashes: {e}"
            ))
        })?,
    };
    let (path, files) = if weights.starts_with(MODEL_PREFIX) {
        let store = Store::from_env().map_err(|e| fail(e.0))?;
        let r = store.resolve(weights).map_err(|e| fail(e.0))?;
        let files = r
            .files
            .iter()
            .map(|(n, p, _)| (n.clone(), p.clone()))
            .collect();
        (r.path, files)
    } else {
        let p = base.join(weights);
        (p.clone(), vec![(weights.to_string(), p)])
    };
    check_hashes(&files, &recorded).map_err(|e| fail(e.0))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(OpenedWeights { path, dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mars-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn the_embedded_manifest_parses_and_names_every_model_once() {
        let m = Manifest::embedded().expect("manifest");
        let mut names: Vec<&str> = m.models.iter().map(|m| m.name.as_str()).collect();
        assert!(names.contains(&"smollm2-135m-instruct"));
        assert!(names.contains(&"gemma-3-270m"));
        assert!(names.contains(&"ppocr-v4-det"));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate model names");
        for model in &m.models {
            for f in &model.files {
                assert_eq!(f.sha256.len(), 64, "{}/{}", model.name, f.name);
                assert!(!f.from.is_empty());
            }
        }
        let gemma = m.get("gemma-3-270m").expect("gemma");
        assert!(!gemma.open_source);
        assert_eq!(gemma.wheels().len(), 4);
    }

    #[test]
    fn a_model_not_pulled_names_the_pull_command() {
        let store = Store::at(temp("missing")).expect("store");
        let e = store.resolve("model:smollm2-135m-instruct").unwrap_err();
        assert!(
            e.0.contains("marsc models pull smollm2-135m-instruct"),
            "{e}"
        );
        let e = store.resolve("model:no-such-model").unwrap_err();
        assert!(e.0.contains("no model `no-such-model`"), "{e}");
        assert!(e.0.contains("smollm2-135m-instruct"), "{e}");
    }

    #[test]
    fn a_changed_file_is_refused_and_an_unchanged_one_passes() {
        let dir = temp("hash");
        let p = dir.join("w.bin");
        std::fs::write(&p, b"weights").expect("write");
        let h = sha256_file(&p).expect("hash");
        let files = vec![("w.bin".to_string(), p.clone())];
        let mut rec = BTreeMap::new();
        rec.insert("w.bin".to_string(), h);
        check_hashes(&files, &rec).expect("unchanged");
        std::fs::write(&p, b"weightz").expect("write");
        let e = check_hashes(&files, &rec).unwrap_err();
        assert!(e.0.contains("changed since `marsc compile`"), "{e}");
    }

    #[test]
    fn sha256_matches_a_known_digest() {
        let dir = temp("digest");
        let p = dir.join("abc");
        std::fs::write(&p, b"abc").expect("write");
        assert_eq!(
            sha256_file(&p).expect("hash"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
