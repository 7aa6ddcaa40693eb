//! Tidy checks over the whole repository, in the spirit of rust-analyzer's: house rules that a
//! review would otherwise have to remember. They read only files inside the repository; they do
//! not build or run anything.

use std::path::{Path, PathBuf};

/// The workspace root (this crate sits one level below it).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the server crate sits inside the workspace")
        .to_owned()
}

/// Directories that hold generated or third-party files, never our sources.
const SKIPPED_DIRS: [&str; 6] = [
    "target",
    ".git",
    "node_modules",
    "corpus",
    "artifacts",
    "browser-artifacts",
];

fn files_with_extension(dir: &Path, extension: &str, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name) && !name.starts_with("target") {
                files_with_extension(&path, extension, found);
            }
        } else if path.extension().and_then(|e| e.to_str()) == Some(extension) {
            found.push(path);
        }
    }
}

fn rust_files() -> Vec<PathBuf> {
    let mut found = Vec::new();
    files_with_extension(&repo_root(), "rs", &mut found);
    assert!(
        found.len() > 50,
        "found only {} .rs files under {}: the walk is broken",
        found.len(),
        repo_root().display()
    );
    found
}

#[test]
fn every_rust_file_starts_with_a_module_doc_paragraph() {
    let missing: Vec<String> = rust_files()
        .into_iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("readable source");
            !text.starts_with("//!")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not start with a `//!` paragraph saying what they own: {missing:#?}"
    );
}

#[test]
fn no_file_is_named_after_nothing_in_particular() {
    let vague: Vec<String> = rust_files()
        .into_iter()
        .filter(|path| {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            ["utils", "util", "common", "helpers", "misc"].contains(&stem)
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        vague.is_empty(),
        "a function lives with the noun it serves, not in a grab-bag file: {vague:#?}"
    );
}

#[test]
fn the_pure_crates_deny_missing_docs() {
    for lib in ["engine/src/lib.rs", "snapshot/src/lib.rs"] {
        let text = std::fs::read_to_string(repo_root().join(lib)).expect("readable lib.rs");
        assert!(
            text.contains("#![deny(missing_docs)]"),
            "{lib} must carry #![deny(missing_docs)]"
        );
    }
}

#[test]
fn no_source_reads_files_beside_the_repository() {
    // A user's clone has no sibling folders: test data belongs in testdata/.
    let mut sources = rust_files();
    for extension in ["mjs", "sh", "toml"] {
        files_with_extension(&repo_root(), extension, &mut sources);
    }
    // Built at run time so this file does not match itself.
    let sibling = ["..", "shared"].join("/");
    let outside: Vec<String> = sources
        .into_iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            text.contains(&sibling)
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        outside.is_empty(),
        "these files read outside the repository: {outside:#?}"
    );
}
