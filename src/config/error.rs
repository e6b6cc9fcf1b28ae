//! Config errors that point into the file.
//!
//! Parsing and validation collect [`Problem`]s (a byte span and a reason);
//! [`ConfigError`] turns them into `FILE:LINE:COL: reason` lines, one per problem.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with the file, before it is tied to a path and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub span: Range<usize>,
    pub message: String,
}

impl Problem {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
        }
    }
}

/// A problem located in a file, printed as `FILE:LINE:COL: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
    pub message: String,
}

impl Diagnostic {
    pub fn locate(path: &Path, text: &str, problem: Problem) -> Self {
        let offset = problem.span.start.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        Self {
            path: path.to_path_buf(),
            line,
            col,
            message: problem.message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(diagnostics))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Each problem as its own `FILE:LINE:COL: reason` line.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Read { .. } => vec![self.to_string()],
            Self::Invalid { diagnostics } => diagnostics.iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        let at = |offset| {
            Diagnostic::locate(Path::new("f.toml"), text, Problem::new(offset..offset, "m"))
        };
        assert_eq!((at(0).line, at(0).col), (1, 1));
        assert_eq!((at(6).line, at(6).col), (2, 1));
        // `=` on line 2 sits after "bé " (3 characters, 4 bytes).
        assert_eq!((at(10).line, at(10).col), (2, 4));
        assert_eq!(at(10).to_string(), "f.toml:2:4: m");
    }

    #[test]
    fn an_invalid_config_reads_as_one_line_per_problem() {
        let text = "a = 1\nb = 2\n";
        let error = ConfigError::Invalid {
            diagnostics: [(0, "first"), (6, "second")]
                .map(|(at, m)| {
                    Diagnostic::locate(Path::new("f.toml"), text, Problem::new(at..at, m))
                })
                .into(),
        };
        assert_eq!(error.to_string(), "f.toml:1:1: first\nf.toml:2:1: second");
        assert_eq!(error.lines(), ["f.toml:1:1: first", "f.toml:2:1: second"]);
    }
}
