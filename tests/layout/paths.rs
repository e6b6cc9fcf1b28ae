//! The paths a file names (`crate::a::B`, each leaf of a `use` tree), and
//! its tokens less its `#[cfg(test)]` modules, where imports are not read.

use super::lexer::{Kind, Token, closing, matches_at};

/// A path as written, `crate::a::B`, `super::c` or `child::D` (a `use`
/// tree expanded into one path per leaf), with the inline modules around it.
pub struct PathRef {
    pub line: usize,
    pub segments: Vec<String>,
    pub inline: Vec<String>,
}

/// Every path of two segments or more in `tokens`, and every leaf of every
/// `use` tree, each with the line it starts on (a `use`: the line of `use`).
pub fn paths(tokens: &[Token]) -> Vec<PathRef> {
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

/// `tokens` less every inline module that `#[cfg(test)]` opens.
pub fn without_test_modules(tokens: Vec<Token>) -> Vec<Token> {
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
