//! Interop tools: finding them, and the skip-or-fail rule when one is missing.
//!
//! With `TERN_REQUIRE_INTEROP=1` (CI sets it) a missing tool fails the test; otherwise the
//! test prints `skipped: <tool> not installed (install: ...)` and returns.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The environment variable that turns a missing interop tool into a failure.
pub const REQUIRE_INTEROP_ENV: &str = "TERN_REQUIRE_INTEROP";

/// True when missing interop tools must fail the test (`TERN_REQUIRE_INTEROP=1`).
pub fn interop_required() -> bool {
    std::env::var(REQUIRE_INTEROP_ENV).is_ok_and(|v| v == "1")
}

/// Finds an executable named `tool` on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
}

/// Returns the path of `tool`, or `None` after printing the skip line. Panics instead of
/// skipping when [`interop_required`].
pub fn require_tool(tool: &str, install: &str) -> Option<PathBuf> {
    match which(tool) {
        Some(p) => Some(p),
        None => {
            skip_or_fail(tool, install);
            None
        }
    }
}

/// Returns `python3` if it can `import module`, else skips (or fails when required).
pub fn require_python_module(module: &str, install: &str) -> Option<PathBuf> {
    let python = require_tool("python3", "apt-get install -y python3")?;
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(python)
    } else {
        skip_or_fail(&format!("python module {module}"), install);
        None
    }
}

/// Prints `skipped: <what> not installed (install: <install>)`, or panics with the same
/// text when [`interop_required`].
pub fn skip_or_fail(what: &str, install: &str) {
    let line = format!("{what} not installed (install: {install})");
    if interop_required() {
        panic!("{REQUIRE_INTEROP_ENV}=1 but {line}");
    }
    eprintln!("skipped: {line}");
}

/// True when the `tern` library these tests link was built with the cargo
/// feature `feature` (see [`tern::FEATURES`]). Otherwise prints
/// `skipped: tern built without --features FEATURE`, or panics with the same
/// text when [`interop_required`] (CI builds with every feature).
pub fn require_tern_feature(feature: &str) -> bool {
    if tern::FEATURES.contains(&feature) {
        return true;
    }
    let line =
        format!("tern built without --features {feature} (cargo test --features tern/{feature})");
    if interop_required() {
        panic!("{REQUIRE_INTEROP_ENV}=1 but {line}");
    }
    eprintln!("skipped: {line}");
    false
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
