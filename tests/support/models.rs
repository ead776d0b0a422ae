//! Shared by the tests that load a stored model: where it is, or why the test skips.

use std::path::PathBuf;

use mars_stdlib::store::Store;

/// The stored file of `model:NAME`, or `None` when it is not pulled: the test prints SKIPPED
/// and passes — unless the environment variable `require` is `1` (`.ci/run` sets it after
/// pulling), where a missing model fails the test.
pub fn stored_model(name: &str, require: &str) -> Option<PathBuf> {
    let store = Store::from_env().expect("manifest");
    match store.resolve(&format!("model:{name}")) {
        Ok(r) => Some(r.path),
        Err(e) if std::env::var(require).as_deref() == Ok("1") => {
            panic!("{require}=1 but: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED (model not pulled; {require} is not 1): {e}");
            None
        }
    }
}
