//! How `marsc` reads the files it is given and writes the files it makes (SPEC 7.3): inputs
//! are regular files of bounded size (a `--profile /dev/zero` or a FIFO is refused, not read
//! forever); an output is never one of the command's inputs nor a `.mars` source; plans and
//! graphs are written whole (a temporary file renamed over the target), so a reader never
//! sees half a file and a planted link is replaced, not written through.

use std::path::Path;

use miette::miette;

/// The largest source file read: 16 MiB.
pub const MAX_SOURCE_BYTES: u64 = 16 << 20;

/// Read a regular file of at most `limit` bytes; `what` names it in the error.
pub fn read_input(path: &Path, what: &str, limit: u64) -> miette::Result<Vec<u8>> {
    mars_runtime::files::read_regular(path, limit).map_err(|e| {
        miette!(
            code = "mars::io::read",
            "cannot read {what} {}: {e}",
            path.display()
        )
    })
}

/// [`read_input`] as UTF-8 text.
pub fn read_input_text(path: &Path, what: &str, limit: u64) -> miette::Result<String> {
    let bytes = read_input(path, what, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        miette!(
            code = "mars::io::read",
            "cannot read {what} {}: not UTF-8 ({e})",
            path.display()
        )
    })
}

/// Refuse to write `output` when it is a `.mars` source or the same file as one of `inputs`
/// (links and `..` followed).
pub fn check_output(output: &Path, inputs: &[&Path]) -> miette::Result<()> {
    if output.extension().is_some_and(|e| e == "mars") {
        return Err(miette!(
            code = "mars::io::output_is_source",
            help = "give the output a name of its own, e.g. `-o app.plan.yaml`",
            "refusing to write {} over a .mars source",
            output.display()
        ));
    }
    for input in inputs {
        if mars_runtime::files::same_file(output, input) {
            return Err(miette!(
                code = "mars::io::output_is_input",
                help = "write the output to another file",
                "the output {} is the input {}; writing it would destroy what is read",
                output.display(),
                input.display()
            ));
        }
    }
    Ok(())
}

/// Write `bytes` to `path` whole: parent folders created, then a temporary file renamed over
/// `path`.
pub fn write_whole(path: &Path, bytes: &[u8]) -> miette::Result<()> {
    if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(|e| {
            miette!(
                code = "mars::io::write",
                "cannot create {}: {e}",
                folder.display()
            )
        })?;
    }
    mars_runtime::files::write_atomically(path, bytes).map_err(|e| {
        miette!(
            code = "mars::io::write",
            "cannot write {}: {e}",
            path.display()
        )
    })
}
