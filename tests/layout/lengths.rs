//! The length rule: no file over 800 lines, no function over 100, and how
//! long each function is, from its `fn` to its closing brace.

use super::lexer::{Kind, Token, closing, lex};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 100;

/// Each of `files` (path, text) over the file limit and each function in
/// them over the function limit, one line each, in order.
pub fn too_long(files: &[(String, String)]) -> Vec<String> {
    let mut offenders = Vec::new();
    for (file, text) in files {
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES {
            offenders.push(format!("{file}: {lines} lines (limit {MAX_FILE_LINES})"));
        }
        for (name, line, lines) in function_lengths(&lex(text)) {
            if lines > MAX_FN_LINES {
                offenders.push(format!(
                    "{file}:{line}: fn {name} is {lines} lines (limit {MAX_FN_LINES})"
                ));
            }
        }
    }
    offenders
}

/// Each function with a body: its name, the line of `fn`, and its lines from
/// there to its closing brace.
pub fn function_lengths(tokens: &[Token]) -> Vec<(String, usize, usize)> {
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
