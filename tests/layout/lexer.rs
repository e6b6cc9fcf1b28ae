//! A small Rust lexer: identifiers, punctuation and literals with their
//! lines; comments dropped, and what literals say. Right for rustfmt-formatted
//! code, not a Rust parser.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ident,
    Punct,
    Literal,
}

/// An identifier or keyword, a punctuation mark (`::` is one), or a literal
/// (its text dropped: what a string says is no code).
#[derive(Debug, Clone)]
pub struct Token {
    pub kind: Kind,
    pub text: String,
    pub line: usize,
}

impl Token {
    pub fn is(&self, text: &str) -> bool {
        self.kind != Kind::Literal && self.text == text
    }
}

pub fn matches_at(tokens: &[Token], at: usize, texts: &[&str]) -> bool {
    (texts.iter().enumerate()).all(|(k, text)| tokens.get(at + k).is_some_and(|t| t.is(text)))
}

/// The index of the bracket that closes the one at `open`.
pub fn closing(tokens: &[Token], open: usize) -> Option<usize> {
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

pub fn lex(text: &str) -> Vec<Token> {
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
