//! The parser and checker on any bytes: never a panic, always an answer (problems or a
//! program), and formatting a file that checks is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mars_compiler::{check_program, SourceFile};

/// The standard library's declarations, as `marsc check` sees them.
fn stdlib() -> Vec<SourceFile> {
    macro_rules! std_file {
        ($name:literal) => {
            SourceFile {
                path: concat!("std/", $name).to_string(),
                text: include_str!(concat!("../../stdlib/mars/std/", $name)).to_string(),
            }
        };
    }
    vec![
        std_file!("bench.mars"),
        std_file!("image.mars"),
        std_file!("json.mars"),
        std_file!("list.mars"),
        std_file!("models.mars"),
        std_file!("text.mars"),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SourceFile::from_bytes("fuzz.mars", data) else {
        return;
    };
    let checked = check_program(&file, &stdlib());
    let _ = checked.problems.render();
    if let Ok(once) = mars_compiler::format::format_file(&file) {
        let again = SourceFile {
            path: "fuzz.mars".into(),
            text: once.clone(),
        };
        if let Ok(twice) = mars_compiler::format::format_file(&again) {
            assert_eq!(once, twice, "formatting is not idempotent");
        }
    }
});
