//! The layout rules that `src/lib.rs` states, checked against the source
//! tree itself: no two source files import each other, directly or around a
//! loop; no file over 800 lines and no function over 100; a data path that
//! reads no file and never reaches the control path.
//!
//! `src/` is read by a small lexer (comments, string and character literals
//! dropped) and a path scanner: right for this rustfmt-formatted code base,
//! not a Rust parser. Imports are read from non-test code only: every
//! `#[cfg(test)]` inline module is removed first, since test code may reach
//! anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::path::Path;

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 100;

/// The control path's top-level modules, which no data-path file may reach.
const CONTROL_PATH: [&str; 3] = ["master", "admin", "config"];
const DATA_PATH_DIRS: [&str; 5] = [
    "src/worker/",
    "src/proxy/",
    "src/upstream/",
    "src/balance/",
    "src/body/",
];
const DATA_PATH_FILES: [&str; 4] = [
    "src/routing.rs",
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

// Test modules count too: a test over 100 lines is as hard to read as any
// other function.
#[test]
fn no_source_file_is_over_800_lines_and_no_function_over_100() {
    let mut offenders = Vec::new();
    for (file, text) in rs_files() {
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES {
            offenders.push(format!("{file}: {lines} lines (limit {MAX_FILE_LINES})"));
        }
        for (name, line, lines) in function_lengths(&lex(&text)) {
            if lines > MAX_FN_LINES {
                offenders.push(format!(
                    "{file}:{line}: fn {name} is {lines} lines (limit {MAX_FN_LINES})"
                ));
            }
        }
    }
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

// --- Reading the tree. ---

/// Every `.rs` file under `src/`, as (`src/...` path, text), sorted by path.
fn rs_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("src/ is readable").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    walk(&root.join("src"), &mut paths);
    let mut files: Vec<(String, String)> = paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a source file is UTF-8");
            let rel = path.strip_prefix(root).expect("under the crate");
            (rel.to_string_lossy().into_owned(), text)
        })
        .collect();
    files.sort();
    files
}

/// The library's files, each with the module it holds.
fn source_tree() -> Vec<Source> {
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
fn module_of(file: &str) -> Option<Vec<String>> {
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

// --- The graph. ---

/// One source file as the graph builder takes it: the module it holds (the
/// crate root is empty), the path to name it by, and its text.
struct Source {
    module: Vec<String>,
    file: String,
    text: String,
}

/// One file's first reference to another file.
struct Edge {
    to: usize,
    line: usize,
    path: String,
}

/// One file: its non-test code, the paths in it, and the files they reach.
struct Node {
    file: String,
    module: Vec<String>,
    lines: Vec<String>,
    tokens: Vec<Token>,
    paths: Vec<PathRef>,
    edges: Vec<Edge>,
}

impl Node {
    fn line(&self, line: usize) -> &str {
        self.lines.get(line - 1).map_or("", |l| l.trim())
    }
}

fn build_graph(sources: Vec<Source>) -> Vec<Node> {
    let index: HashMap<Vec<String>, usize> = sources
        .iter()
        .enumerate()
        .map(|(k, s)| (s.module.clone(), k))
        .collect();
    let mut graph = Vec::with_capacity(sources.len());
    for (from, source) in sources.into_iter().enumerate() {
        let tokens = without_test_modules(lex(&source.text));
        let paths = paths(&tokens);
        let mut edges: Vec<Edge> = Vec::new();
        for path in &paths {
            let Some(to) = resolve(path, &source.module, &index) else {
                continue;
            };
            if to != from && !edges.iter().any(|e| e.to == to) {
                let (line, path) = (path.line, path.segments.join("::"));
                edges.push(Edge { to, line, path });
            }
        }
        graph.push(Node {
            file: source.file,
            module: source.module,
            lines: source.text.lines().map(String::from).collect(),
            tokens,
            paths,
            edges,
        });
    }
    graph
}

/// The file a path refers to: the longest prefix of what it names that is a
/// module file. `None` for a path outside the crate (`std::…`, `tokio::…`)
/// or a local item's (`Type::new`).
fn resolve(
    path: &PathRef,
    module: &[String],
    index: &HashMap<Vec<String>, usize>,
) -> Option<usize> {
    let mut scope: Vec<String> = module.iter().chain(&path.inline).cloned().collect();
    let segments = &path.segments;
    let rest = match segments[0].as_str() {
        "crate" => {
            scope.clear();
            &segments[1..]
        }
        "self" => &segments[1..],
        "super" => {
            let supers = segments.iter().take_while(|s| *s == "super").count();
            for _ in 0..supers {
                scope.pop()?;
            }
            &segments[supers..]
        }
        // A relative path: a module naming one of its child modules.
        first => {
            scope.push(first.to_string());
            index.get(&scope)?;
            scope.pop();
            &segments[..]
        }
    };
    scope.extend(rest.iter().cloned());
    (0..=scope.len())
        .rev()
        .find_map(|n| index.get(&scope[..n]).copied())
}

/// The import graph's strongly connected components of more than one file,
/// each sorted by path, in path order: every one is a cycle.
fn cycles(graph: &[Node]) -> Vec<Vec<usize>> {
    let n = graph.len();
    let mut tarjan = Tarjan {
        graph,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if tarjan.index[v].is_none() {
            tarjan.visit(v);
        }
    }
    let mut cycles: Vec<Vec<usize>> = tarjan
        .components
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    for cycle in &mut cycles {
        cycle.sort_by(|a, b| graph[*a].file.cmp(&graph[*b].file));
    }
    cycles.sort_by(|a, b| graph[a[0]].file.cmp(&graph[b[0]].file));
    cycles
}

struct Tarjan<'g> {
    graph: &'g [Node],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        let graph = self.graph;
        for edge in &graph[v].edges {
            let w = edge.to;
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(index) if self.on_stack[w] => self.low[v] = self.low[v].min(index),
                Some(_) => {}
            }
        }
        if self.index[v] == Some(self.low[v]) {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

/// The shortest chain of imports from `from` to a file that `goal` accepts,
/// passing only through files that `through` accepts, as the files in order.
/// `from` can end the chain, so a loop back to it can be asked for.
fn shortest_chain(
    graph: &[Node],
    from: usize,
    through: impl Fn(usize) -> bool,
    goal: impl Fn(usize) -> bool,
) -> Option<Vec<usize>> {
    let mut came_from: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    while let Some(v) = queue.pop_front() {
        for w in graph[v].edges.iter().map(|e| e.to) {
            if goal(w) {
                let mut chain = vec![w, v];
                let mut at = v;
                while at != from {
                    at = came_from[&at];
                    chain.push(at);
                }
                chain.reverse();
                return Some(chain);
            }
            if through(w) && w != from && !came_from.contains_key(&w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    None
}

fn describe_edge(graph: &[Node], from: usize, edge: &Edge) -> String {
    let node = &graph[from];
    format!(
        "{}:{}: `{}` ({}) -> {}",
        node.file,
        edge.line,
        node.line(edge.line),
        edge.path,
        graph[edge.to].file
    )
}

/// Each import along `chain`, one a line.
fn describe_chain(graph: &[Node], chain: &[usize]) -> String {
    chain
        .windows(2)
        .map(|hop| {
            let edge = graph[hop[0]].edges.iter().find(|e| e.to == hop[1]);
            format!(
                "    {}",
                describe_edge(graph, hop[0], edge.expect("an edge"))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cycle's files, one loop through them, and every import inside it.
fn describe_cycle(graph: &[Node], cycle: &[usize]) -> String {
    let files: Vec<&str> = cycle.iter().map(|&k| graph[k].file.as_str()).collect();
    let start = cycle[0];
    let a_loop = shortest_chain(graph, start, |w| cycle.contains(&w), |w| w == start)
        .expect("a strongly connected component loops");
    let a_loop: Vec<&str> = a_loop.iter().map(|&k| graph[k].file.as_str()).collect();
    let mut imports = Vec::new();
    for &from in cycle {
        for edge in graph[from].edges.iter().filter(|e| cycle.contains(&e.to)) {
            imports.push(format!("    {}", describe_edge(graph, from, edge)));
        }
    }
    format!(
        "cycle among {}\n  for one: {}\n  its imports:\n{}\n",
        files.join(", "),
        a_loop.join(" -> "),
        imports.join("\n")
    )
}

// --- The paths in a file. ---

/// A path as written, `crate::a::B`, `super::c` or `child::D` (a `use`
/// tree expanded into one path per leaf), with the inline modules around it.
struct PathRef {
    line: usize,
    segments: Vec<String>,
    inline: Vec<String>,
}

/// Every path of two segments or more in `tokens`, and every leaf of every
/// `use` tree, each with the line it starts on (a `use`: the line of `use`).
fn paths(tokens: &[Token]) -> Vec<PathRef> {
    fn names(inline: &[(String, usize)]) -> Vec<String> {
        inline.iter().map(|(name, _)| name.clone()).collect()
    }
    let mut found = Vec::new();
    // Each inline module open here, with the brace depth outside it.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        if matches_at(tokens, i, &["mod"])
            && tokens.get(i + 1).is_some_and(|t| t.kind == Kind::Ident)
            && matches_at(tokens, i + 2, &["{"])
        {
            inline.push((tokens[i + 1].text.clone(), depth));
            depth += 1;
            i += 3;
        } else if token.is("{") {
            depth += 1;
            i += 1;
        } else if token.is("}") {
            depth -= 1;
            if inline.last().is_some_and(|(_, outside)| *outside == depth) {
                inline.pop();
            }
            i += 1;
        } else if token.is("use") {
            let mut leaves = Vec::new();
            i += 1;
            use_tree(tokens, &mut i, Vec::new(), &mut leaves);
            found.extend(leaves.into_iter().map(|segments| PathRef {
                line: token.line,
                segments,
                inline: names(&inline),
            }));
        } else if token.kind == Kind::Ident && !(i >= 2 && matches_at(tokens, i - 2, &[">", "::"]))
        {
            // After `<T as Trait>::` a name is the type's, not a path's start.
            let mut segments = vec![token.text.clone()];
            i += 1;
            while matches_at(tokens, i, &["::"])
                && tokens.get(i + 1).is_some_and(|t| t.kind == Kind::Ident)
            {
                segments.push(tokens[i + 1].text.clone());
                i += 2;
            }
            if segments.len() > 1 {
                let inline = names(&inline);
                found.push(PathRef {
                    line: token.line,
                    segments,
                    inline,
                });
            }
        } else {
            i += 1;
        }
    }
    found
}

/// Reads one use tree from `at` (`crate::a::{b, c::{D, E}}`), adding the
/// full path of each leaf to `out`; `a::{self, B}` names `a` itself.
fn use_tree(tokens: &[Token], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    while let Some(token) = tokens.get(*at) {
        if token.is("::") {
            *at += 1;
        } else if token.is("as") {
            // The alias names nothing.
            *at += 2;
        } else if token.is("{") {
            *at += 1;
            while tokens.get(*at).is_some_and(|t| !t.is("}")) {
                let before = *at;
                use_tree(tokens, at, path.clone(), out);
                if matches_at(tokens, *at, &[","]) {
                    *at += 1;
                } else if *at == before {
                    break;
                }
            }
            *at += 1;
            return;
        } else if token.kind == Kind::Ident || token.is("*") {
            path.push(token.text.clone());
            *at += 1;
        } else {
            break;
        }
    }
    if path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// Each function with a body: its name, the line of `fn`, and its lines from
/// there to its closing brace.
fn function_lengths(tokens: &[Token]) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    for i in 0..tokens.len() {
        if !tokens[i].is("fn") || tokens.get(i + 1).is_none_or(|t| t.kind != Kind::Ident) {
            continue;
        }
        // The body is the first `{` outside the signature's brackets; a `;`
        // there first ends a declaration without one.
        let mut depth = 0usize;
        let body = (i + 2..tokens.len()).find(|&j| {
            let t = &tokens[j];
            if t.is("(") || t.is("[") {
                depth += 1;
            } else if t.is(")") || t.is("]") {
                depth = depth.saturating_sub(1);
            }
            depth == 0 && (t.is("{") || t.is(";"))
        });
        let Some(close) = body
            .filter(|&j| tokens[j].is("{"))
            .and_then(|j| closing(tokens, j))
        else {
            continue;
        };
        let lines = tokens[close].line - tokens[i].line + 1;
        found.push((tokens[i + 1].text.clone(), tokens[i].line, lines));
    }
    found
}

// --- Tokens. ---

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ident,
    Punct,
    Literal,
}

/// An identifier or keyword, a punctuation mark (`::` is one), or a literal
/// (its text dropped: what a string says is no code).
#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    text: String,
    line: usize,
}

impl Token {
    fn is(&self, text: &str) -> bool {
        self.kind != Kind::Literal && self.text == text
    }
}

fn matches_at(tokens: &[Token], at: usize, texts: &[&str]) -> bool {
    (texts.iter().enumerate()).all(|(k, text)| tokens.get(at + k).is_some_and(|t| t.is(text)))
}

/// The index of the bracket that closes the one at `open`.
fn closing(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (k, t) in tokens.iter().enumerate().skip(open) {
        if t.is("(") || t.is("[") || t.is("{") {
            depth += 1;
        } else if t.is(")") || t.is("]") || t.is("}") {
            depth -= 1;
            if depth == 0 {
                return Some(k);
            }
        }
    }
    None
}

/// `tokens` less every inline module that `#[cfg(test)]` opens.
fn without_test_modules(tokens: Vec<Token>) -> Vec<Token> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        match test_module_end(&tokens, i) {
            Some(end) => i = end,
            None => {
                kept.push(tokens[i].clone());
                i += 1;
            }
        }
    }
    kept
}

/// One past the closing brace of the test module whose `#[cfg(test)]` is at
/// `i`, if one is: `#[cfg(test)]`, other attributes, `pub(…)`, `mod name {`.
fn test_module_end(tokens: &[Token], i: usize) -> Option<usize> {
    if !matches_at(tokens, i, &["#", "[", "cfg", "(", "test", ")", "]"]) {
        return None;
    }
    let mut j = i + 7;
    while matches_at(tokens, j, &["#", "["]) {
        j = closing(tokens, j + 1)? + 1;
    }
    if matches_at(tokens, j, &["pub"]) {
        j += 1;
        if matches_at(tokens, j, &["("]) {
            j = closing(tokens, j)? + 1;
        }
    }
    let opens = matches_at(tokens, j, &["mod"])
        && tokens.get(j + 1).is_some_and(|t| t.kind == Kind::Ident)
        && matches_at(tokens, j + 2, &["{"]);
    if opens {
        Some(closing(tokens, j + 2)? + 1)
    } else {
        None
    }
}

fn lex(text: &str) -> Vec<Token> {
    let mut lexer = Lexer {
        chars: text.chars().collect(),
        at: 0,
        line: 1,
        tokens: Vec::new(),
    };
    while let Some(c) = lexer.peek(0) {
        lexer.step(c);
    }
    lexer.tokens
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
    line: usize,
    tokens: Vec<Token>,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn bump(&mut self) {
        if self.peek(0) == Some('\n') {
            self.line += 1;
        }
        self.at += 1;
    }

    fn push(&mut self, kind: Kind, text: String, line: usize) {
        self.tokens.push(Token { kind, text, line });
    }

    fn step(&mut self, c: char) {
        let line = self.line;
        match (c, self.peek(1)) {
            ('/', Some('/')) => {
                while self.peek(0).is_some_and(|c| c != '\n') {
                    self.bump();
                }
            }
            ('/', Some('*')) => self.block_comment(),
            ('"', _) => self.string(None, line),
            ('\'', _) => self.quote(),
            (':', Some(':')) => {
                self.bump();
                self.bump();
                self.push(Kind::Punct, "::".to_string(), line);
            }
            (c, _) if c.is_whitespace() => self.bump(),
            (c, _) if c.is_ascii_digit() => {
                let number = self.word();
                self.push(Kind::Literal, number, line);
            }
            (c, _) if c.is_alphabetic() || c == '_' => self.word_or_prefixed_literal(),
            (c, _) => {
                self.bump();
                self.push(Kind::Punct, c.to_string(), line);
            }
        }
    }

    fn word(&mut self) -> String {
        let start = self.at;
        while self
            .peek(0)
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            self.bump();
        }
        self.chars[start..self.at].iter().collect()
    }

    /// An identifier, or the prefix of a literal: `b"…"`, `c"…"`, `b'x'`,
    /// `r#"…"#`, `br"…"`; or a raw identifier, `r#type`.
    fn word_or_prefixed_literal(&mut self) {
        let line = self.line;
        let word = self.word();
        match (word.as_str(), self.peek(0)) {
            ("b" | "c", Some('"')) => self.string(None, line),
            ("b", Some('\'')) => self.quote(),
            ("r" | "br" | "cr", Some('"' | '#')) => {
                let hashes = (0..).take_while(|&k| self.peek(k) == Some('#')).count();
                if self.peek(hashes) == Some('"') {
                    for _ in 0..hashes {
                        self.bump();
                    }
                    self.string(Some(hashes), line);
                } else {
                    self.bump();
                    let word = self.word();
                    self.push(Kind::Ident, word, line);
                }
            }
            _ => self.push(Kind::Ident, word, line),
        }
    }

    fn block_comment(&mut self) {
        let mut depth = 0;
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some('/'), Some('*')) => {
                    depth += 1;
                    self.bump();
                    self.bump();
                }
                (Some('*'), Some('/')) => {
                    depth -= 1;
                    self.bump();
                    self.bump();
                    if depth == 0 {
                        return;
                    }
                }
                (Some(_), _) => self.bump(),
                (None, _) => return,
            }
        }
    }

    /// A string literal from its opening quote; `raw` is the number of `#`
    /// that close a raw string after its `"`.
    fn string(&mut self, raw: Option<usize>, line: usize) {
        self.bump();
        while let Some(c) = self.peek(0) {
            self.bump();
            match (c, raw) {
                ('\\', None) => self.bump(),
                ('"', None) => break,
                ('"', Some(hashes)) if (0..hashes).all(|k| self.peek(k) == Some('#')) => {
                    for _ in 0..hashes {
                        self.bump();
                    }
                    break;
                }
                _ => {}
            }
        }
        self.push(Kind::Literal, String::new(), line);
    }

    /// A character literal (`'x'`, `'\n'`, `'"'`) or a lifetime's quote.
    fn quote(&mut self) {
        let line = self.line;
        if self.peek(1) == Some('\\') {
            // The quote, the backslash, the escaped character, and up to the
            // closing quote: `'\''`, `'\u{1F600}'`.
            for _ in 0..3 {
                self.bump();
            }
            while self.peek(0).is_some_and(|c| c != '\'') {
                self.bump();
            }
            self.bump();
            self.push(Kind::Literal, String::new(), line);
        } else if self.peek(2) == Some('\'') {
            for _ in 0..3 {
                self.bump();
            }
            self.push(Kind::Literal, String::new(), line);
        } else {
            self.bump();
            self.push(Kind::Punct, "'".to_string(), line);
        }
    }
}
