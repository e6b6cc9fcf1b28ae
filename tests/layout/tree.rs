//! Reading the tree: every `.rs` file git tracks or would, and the module
//! each library file holds.

use std::path::{Path, PathBuf};

use super::graph::Source;

/// Every `.rs` file of the repository that git tracks or would, as (path
/// from the crate root, text), sorted by path.
pub fn rs_files() -> Vec<(String, String)> {
    rs_files_at(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// Every `.rs` file below `root` less those git leaves out: its own `.git`,
/// and every `target/` at any depth (as `.gitignore` says), where cargo
/// builds; as (path from `root`, text), sorted by path.
pub fn rs_files_at(root: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("the tree is readable") {
            let path = entry.expect("the tree is readable").path();
            if path.is_dir() {
                if !path
                    .file_name()
                    .is_some_and(|n| n == ".git" || n == "target")
                {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(root, &mut paths);
    let mut files: Vec<(String, String)> = paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a source file is UTF-8");
            let rel = path.strip_prefix(root).expect("under the root");
            (rel.to_string_lossy().into_owned(), text)
        })
        .collect();
    files.sort();
    files
}

/// The library's files (every one under `src/` but the binary's `main.rs`),
/// each with the module it holds.
pub fn source_tree() -> Vec<Source> {
    rs_files()
        .into_iter()
        .filter_map(|(file, text)| {
            Some(Source {
                module: module_of(&file)?,
                file,
                text,
            })
        })
        .collect()
}

/// The module a file holds: `src/a.rs` and `src/a/mod.rs` are `a`,
/// `src/a/b.rs` is `a::b`, `src/lib.rs` the crate root (empty); `None` for
/// `src/main.rs`, the binary, which is no module of the library.
pub fn module_of(file: &str) -> Option<Vec<String>> {
    let rel = file.strip_prefix("src/")?.strip_suffix(".rs")?;
    let mut module: Vec<String> = rel.split('/').map(String::from).collect();
    match (module.len(), module[module.len() - 1].as_str()) {
        (1, "main") => return None,
        (1, "lib") | (_, "mod") => {
            module.pop();
        }
        _ => {}
    }
    Some(module)
}
