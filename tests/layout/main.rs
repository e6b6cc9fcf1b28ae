//! The layout rules that `src/lib.rs` states, checked against the source
//! tree itself: no two source files import each other, directly or around a
//! loop; no file over 800 lines and no function over 100, in the library,
//! the binary, the tests and the benchmarks alike; a data path that reads no
//! file and never reaches the control path.
//!
//! Files are read by a small lexer (comments, string and character literals
//! dropped) and a path scanner: right for this rustfmt-formatted code base,
//! not a Rust parser. Imports are read from `src/`'s non-test code only:
//! every `#[cfg(test)]` inline module is removed first, since test code may
//! reach anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod graph;
mod lengths;
mod lexer;
mod paths;
mod tree;

use graph::{Node, Source, build_graph, cycles, describe_chain, describe_cycle, shortest_chain};
use lengths::{function_lengths, too_long};
use lexer::{Kind, lex};
use tree::{module_of, rs_files, rs_files_at, source_tree};

/// The control path's top-level modules, which no data-path file may reach.
const CONTROL_PATH: [&str; 3] = ["master", "admin", "config"];
const DATA_PATH_DIRS: [&str; 5] = [
    "src/worker/",
    "src/proxy/",
    "src/upstream/",
    "src/balance/",
    "src/body/",
];
const DATA_PATH_FILES: [&str; 6] = [
    "src/routing.rs",
    "src/challenges.rs",
    "src/proxy_protocol.rs",
    "src/snapshot.rs",
    "src/plan.rs",
    "src/tls.rs",
];
/// Paths that read a file. `tokio::fs` stands beside `std::fs` because it
/// is the same reads, run on a blocking thread.
const FILE_READING_PATHS: [&[&str]; 3] = [&["std", "fs"], &["tokio", "fs"], &["File", "open"]];
/// Names that only reading a file, or parsing a config, needs.
const FILE_READING_NAMES: [&str; 3] = ["toml", "read_to_string", "OpenOptions"];

#[test]
fn no_two_source_files_import_each_other() {
    let graph = build_graph(source_tree());
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "{} import cycle(s) between source files:\n\n{}",
        cycles.len(),
        cycles
            .iter()
            .map(|c| describe_cycle(&graph, c))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// Every `.rs` file counts, tests and benchmarks too: a test over 100 lines
// is as hard to read as any other function.
#[test]
fn no_source_file_is_over_800_lines_and_no_function_over_100() {
    let offenders = too_long(&rs_files());
    assert!(offenders.is_empty(), "too long:\n{}", offenders.join("\n"));
}

#[test]
fn the_data_path_reads_no_file_and_imports_no_control_path() {
    let graph = build_graph(source_tree());
    for listed in DATA_PATH_DIRS.iter().chain(&DATA_PATH_FILES) {
        assert!(
            graph.iter().any(|n| n.file.starts_with(listed)),
            "{listed} is on this test's data-path list but not in src/: update the list"
        );
    }
    let offences = data_path_offences(&graph);
    assert!(
        offences.is_empty(),
        "the data path reads files or reaches the control path:\n{}",
        offences.join("\n")
    );
}

fn is_data_path(file: &str) -> bool {
    DATA_PATH_DIRS.iter().any(|d| file.starts_with(d)) || DATA_PATH_FILES.contains(&file)
}

/// Every place where a data-path file reads a file, and every data-path
/// file that reaches the control path, with the chain of imports it takes.
fn data_path_offences(graph: &[Node]) -> Vec<String> {
    let is_control =
        |at: usize| (graph[at].module.first()).is_some_and(|m| CONTROL_PATH.contains(&m.as_str()));
    let mut offences = Vec::new();
    for (at, node) in graph
        .iter()
        .enumerate()
        .filter(|(_, n)| is_data_path(&n.file))
    {
        offences.extend(file_reading(node));
        if let Some(chain) = shortest_chain(graph, at, |_| true, is_control) {
            offences.push(format!(
                "{} reaches the control path ({}):\n{}",
                node.file,
                graph[chain[chain.len() - 1]].file,
                describe_chain(graph, &chain)
            ));
        }
    }
    offences
}

/// Each place in `node`'s non-test code that reads a file or names what only
/// reading one needs.
fn file_reading(node: &Node) -> Vec<String> {
    let mut found = Vec::new();
    for path in &node.paths {
        let names = |what: &&&[&str]| path.segments.windows(what.len()).any(|w| w == **what);
        if let Some(what) = FILE_READING_PATHS.iter().find(names) {
            found.push(format!(
                "{}:{}: `{}` uses {}",
                node.file,
                path.line,
                node.line(path.line),
                what.join("::")
            ));
        }
    }
    for token in &node.tokens {
        if token.kind == Kind::Ident && FILE_READING_NAMES.contains(&token.text.as_str()) {
            found.push(format!(
                "{}:{}: `{}` uses {}",
                node.file,
                token.line,
                node.line(token.line),
                token.text
            ));
        }
    }
    found
}

// --- The fake-file checks: the graph builder on sources held in memory. ---

fn fake(files: &[(&str, &str)]) -> Vec<Node> {
    build_graph(
        files
            .iter()
            .map(|(file, text)| Source {
                module: module_of(file).expect("a library file"),
                file: file.to_string(),
                text: text.to_string(),
            })
            .collect(),
    )
}

fn edges_of(graph: &[Node], file: &str) -> Vec<String> {
    let node = graph.iter().find(|n| n.file == file).expect("a fake file");
    node.edges
        .iter()
        .map(|e| graph[e.to].file.clone())
        .collect()
}

#[test]
fn the_cycle_finder_sees_a_cycle_through_a_multi_line_braced_use() {
    let graph = fake(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        (
            "src/a.rs",
            "use crate::{\n    b::Y,\n    c::{\n        Z,\n    },\n};\npub struct X;\n",
        ),
        ("src/b.rs", "pub struct Y(crate::a::X);\n"),
        ("src/c.rs", "pub struct Z;\n"),
    ]);
    assert_eq!(edges_of(&graph, "src/a.rs"), ["src/b.rs", "src/c.rs"]);
    assert_eq!(edges_of(&graph, "src/b.rs"), ["src/a.rs"]);
    let cycles = cycles(&graph);
    assert_eq!(cycles.len(), 1);
    let files: Vec<&str> = cycles[0].iter().map(|&k| graph[k].file.as_str()).collect();
    assert_eq!(files, ["src/a.rs", "src/b.rs"]);
    let report = describe_cycle(&graph, &cycles[0]);
    assert!(
        report.contains("src/a.rs -> src/b.rs -> src/a.rs"),
        "{report}"
    );
    assert!(
        report.contains("src/a.rs:1: `use crate::{` (crate::b::Y)"),
        "{report}"
    );
}

#[test]
fn a_parent_using_its_child_that_uses_super_is_a_cycle_and_mod_alone_is_no_edge() {
    let graph = fake(&[
        ("src/lib.rs", "pub mod m;\n"),
        (
            "src/m/mod.rs",
            "mod child;\nmod quiet;\npub use child::Thing;\npub struct Parent;\n",
        ),
        ("src/m/child.rs", "pub struct Thing(super::Parent);\n"),
        (
            "src/m/quiet.rs",
            "use self::inner::Q;\nmod inner { pub struct Q; }\n",
        ),
    ]);
    assert_eq!(edges_of(&graph, "src/m/mod.rs"), ["src/m/child.rs"]);
    assert_eq!(edges_of(&graph, "src/m/child.rs"), ["src/m/mod.rs"]);
    assert!(edges_of(&graph, "src/m/quiet.rs").is_empty());
    assert_eq!(cycles(&graph).len(), 1);
}

#[test]
fn comments_strings_test_modules_and_inline_modules_make_no_edge() {
    let noise = r###"//! Uses crate::b::X, in a doc.
/// And crate::b::Y.
// And crate::b::Z.
/* crate::b::W /* nested */ crate::b::V */
const S: &str = "crate::b::X \" crate::b::Y";
const R: &str = r#"crate::b::"X""#;
const Q: char = '"';
const E: char = '\'';
fn f<'a>(s: &'a str) -> &'a str {
    s
}
#[cfg(test)]
mod tests {
    use crate::b::X;
}
"###;
    let graph = fake(&[
        ("src/lib.rs", "mod a;\nmod b;\n"),
        ("src/a.rs", noise),
        (
            "src/b.rs",
            "pub struct X;\nmod inner {\n    use super::X;\n}\nconst T: &str = crate::a::S;\n",
        ),
    ]);
    assert!(edges_of(&graph, "src/a.rs").is_empty());
    assert_eq!(edges_of(&graph, "src/b.rs"), ["src/a.rs"]);
    assert!(cycles(&graph).is_empty());
}

#[test]
fn a_data_path_file_reaching_config_through_a_shared_file_or_reading_one_is_named() {
    let graph = fake(&[
        (
            "src/lib.rs",
            "pub mod config;\npub mod ipc;\npub mod plan;\n",
        ),
        ("src/config/mod.rs", "pub struct Raw;\n"),
        ("src/ipc.rs", "pub use crate::config::Raw;\n"),
        (
            "src/plan.rs",
            "use std::{\n    fs,\n    io,\n};\npub struct Plan(crate::ipc::Raw);\n",
        ),
        (
            "src/tls.rs",
            "fn f() {\n    let pem = read_to_string(\"a.pem\");\n}\n",
        ),
    ]);
    let offences = data_path_offences(&graph).join("\n");
    let expected = [
        "src/plan.rs:1: `use std::{` uses std::fs",
        "src/plan.rs reaches the control path (src/config/mod.rs):",
        "    src/plan.rs:5: `pub struct Plan(crate::ipc::Raw);` (crate::ipc::Raw) -> src/ipc.rs",
        "    src/ipc.rs:1: `pub use crate::config::Raw;` (crate::config::Raw) -> src/config/mod.rs",
        "src/tls.rs:2: `let pem = read_to_string(\"a.pem\");` uses read_to_string",
    ];
    assert_eq!(offences, expected.join("\n"));
}

#[test]
fn a_function_runs_from_its_fn_line_to_its_closing_brace() {
    let text = "trait T {\n    fn declared(&self) -> [u8; 4];\n}\n\
        fn one() -> u8 { 1 }\n\
        pub async fn signed<F>(\n    f: F,\n) -> [u8; 2]\nwhere\n    F: Fn(u8) -> u8,\n{\n    [f(1), 2]\n}\n";
    let lengths = function_lengths(&lex(text));
    assert_eq!(
        lengths,
        [("one".to_string(), 4, 1), ("signed".to_string(), 5, 8)]
    );
}

#[test]
fn every_file_over_800_lines_and_every_function_over_100_is_named() {
    let body = |lines: usize| "    f();\n".repeat(lines - 2);
    let files = [
        ("benches/a.rs", "// A line.\n".repeat(801)),
        ("src/b.rs", format!("fn limit() {{\n{}}}\n", body(100))),
        ("tests/c.rs", format!("fn over() {{\n{}}}\n", body(101))),
        ("tests/d/main.rs", "// A line.\n".repeat(800)),
    ];
    let files: Vec<(String, String)> = files.map(|(f, t)| (f.to_string(), t)).to_vec();
    assert_eq!(
        too_long(&files),
        [
            "benches/a.rs: 801 lines (limit 800)",
            "tests/c.rs:1: fn over is 101 lines (limit 100)",
        ]
    );
}

#[test]
fn the_length_check_reads_every_rs_file_git_would_track() {
    let root = tempfile::tempdir().unwrap();
    let laid_out = [
        ".ci/check.rs",
        ".git/hooks/hook.rs",
        "benches/a.rs",
        "benches/e2e/target/built.rs",
        "build.rs",
        "examples/b.rs",
        "notes.txt",
        "src/lib.rs",
        "target/debug/build/out.rs",
        "tests/common/mod.rs",
        "tests/layout/main.rs",
    ];
    for file in laid_out {
        let path = root.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "fn f() {}\n").unwrap();
    }
    let found: Vec<String> = rs_files_at(root.path())
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    let expected = [
        ".ci/check.rs",
        "benches/a.rs",
        "build.rs",
        "examples/b.rs",
        "src/lib.rs",
        "tests/common/mod.rs",
        "tests/layout/main.rs",
    ];
    assert_eq!(found, expected);
}
