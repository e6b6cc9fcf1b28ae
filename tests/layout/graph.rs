//! The import graph between the library's files: built from their paths,
//! its cycles (Tarjan's strongly connected components), the shortest chain
//! of imports between two files, and each described for a failure message.

use std::collections::{HashMap, VecDeque};

use super::lexer::{Token, lex};
use super::paths::{PathRef, paths, without_test_modules};

/// One source file as the graph builder takes it: the module it holds (the
/// crate root is empty), the path to name it by, and its text.
pub struct Source {
    pub module: Vec<String>,
    pub file: String,
    pub text: String,
}

/// One file's first reference to another file.
pub struct Edge {
    pub to: usize,
    pub line: usize,
    pub path: String,
}

/// One file: its non-test code, the paths in it, and the files they reach.
pub struct Node {
    pub file: String,
    pub module: Vec<String>,
    lines: Vec<String>,
    pub tokens: Vec<Token>,
    pub paths: Vec<PathRef>,
    pub edges: Vec<Edge>,
}

impl Node {
    pub fn line(&self, line: usize) -> &str {
        self.lines.get(line - 1).map_or("", |l| l.trim())
    }
}

pub fn build_graph(sources: Vec<Source>) -> Vec<Node> {
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
pub fn cycles(graph: &[Node]) -> Vec<Vec<usize>> {
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
pub fn shortest_chain(
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
pub fn describe_chain(graph: &[Node], chain: &[usize]) -> String {
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
pub fn describe_cycle(graph: &[Node], cycle: &[usize]) -> String {
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
