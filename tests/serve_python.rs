//! `marsc serve` driven by the real Python clients (`tritonclient` HTTP and gRPC, `openai`):
//! runs `tests/serve/clients.py` with the interpreter named by `MARS_SERVE_PYTHON` (a virtual
//! environment with `tests/serve/requirements.txt`; `.ci/run` makes one). Without it the test
//! says so and passes, unless `MARS_REQUIRE_PY=1` (as in CI).

use std::process::Command;

#[test]
fn the_python_clients_talk_to_marsc_serve() {
    let python = match std::env::var("MARS_SERVE_PYTHON") {
        Ok(p) => p,
        Err(_) if std::env::var("MARS_REQUIRE_PY").as_deref() == Ok("1") => {
            panic!("MARS_REQUIRE_PY=1 but MARS_SERVE_PYTHON names no interpreter")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: set MARS_SERVE_PYTHON to a python with tests/serve/requirements.txt"
            );
            return;
        }
    };
    let out = Command::new(&python)
        .arg("tests/serve/clients.py")
        .arg(env!("CARGO_BIN_EXE_marsc"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "clients.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
