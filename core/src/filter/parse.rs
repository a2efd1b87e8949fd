//! The filter language's lexer and recursive-descent parser (see the [grammar](super)).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::{Field, Filter, FilterError, Flag, MAX_DEPTH, is_keyword, is_word_char};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    Eq,
    Ne,
    Word(String),
    Quoted(String),
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    tok: Tok,
    column: usize,
}

impl Token {
    fn text(&self) -> String {
        match &self.tok {
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Eq => "=".into(),
            Tok::Ne => "!=".into(),
            Tok::Word(w) => w.clone(),
            Tok::Quoted(q) => format!("\"{q}\""),
        }
    }

    pub(super) fn unexpected(&self, expected: &'static str) -> FilterError {
        FilterError::UnexpectedToken {
            token: self.text(),
            column: self.column,
            expected,
        }
    }
}

pub(super) fn lex(input: &str) -> Result<Vec<Token>, FilterError> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        let column = i + 1;
        let tok = match c {
            c if c.is_whitespace() => continue,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '=' => Tok::Eq,
            '!' => match chars.next() {
                Some((_, '=')) => Tok::Ne,
                _ => return Err(FilterError::InvalidCharacter { ch: '!', column }),
            },
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(FilterError::UnterminatedString { column }),
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, e)) => s.push(e),
                            None => return Err(FilterError::UnterminatedString { column }),
                        },
                        Some((_, c)) => s.push(c),
                    }
                }
                Tok::Quoted(s)
            }
            c if is_word_char(c) => {
                let mut s = String::from(c);
                while let Some(&(_, c)) = chars.peek() {
                    if !is_word_char(c) {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                Tok::Word(s)
            }
            ch => return Err(FilterError::InvalidCharacter { ch, column }),
        };
        tokens.push(Token { tok, column });
    }
    Ok(tokens)
}

pub(super) struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// The column just past the input, for "unexpected end" errors.
    end: usize,
}

impl Parser {
    /// A parser over `tokens`; `end` is the column just past the input.
    pub(super) fn new(tokens: Vec<Token>, end: usize) -> Self {
        Parser {
            tokens,
            pos: 0,
            end,
        }
    }

    pub(super) fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self, expected: &'static str) -> Result<Token, FilterError> {
        let t = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or(FilterError::UnexpectedEnd {
                column: self.end,
                expected,
            })?;
        self.pos += 1;
        Ok(t)
    }

    fn at_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Word(w), .. }) if w == word)
    }

    fn check_depth(depth: usize, column: usize) -> Result<(), FilterError> {
        if depth > MAX_DEPTH {
            return Err(FilterError::TooDeep {
                column,
                limit: MAX_DEPTH,
            });
        }
        Ok(())
    }

    pub(super) fn or(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.and(depth)?;
        while self.at_word("or") {
            self.pos += 1;
            let right = self.and(depth)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.unary(depth)?;
        while self.at_word("and") {
            self.pos += 1;
            let right = self.unary(depth)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if self.at_word("not") {
            let column = self.peek().map_or(self.end, |t| t.column);
            Self::check_depth(depth + 1, column)?;
            self.pos += 1;
            return Ok(Filter::Not(Box::new(self.unary(depth + 1)?)));
        }
        self.primary(depth)
    }

    fn primary(&mut self, depth: usize) -> Result<Filter, FilterError> {
        const EXPECTED: &str = "a field, a flag, 'not' or '('";
        let token = self.next(EXPECTED)?;
        let word = match &token.tok {
            Tok::LParen => {
                Self::check_depth(depth + 1, token.column)?;
                let inner = self.or(depth + 1)?;
                let close = self.next("')'")?;
                if close.tok != Tok::RParen {
                    return Err(close.unexpected("')'"));
                }
                return Ok(inner);
            }
            Tok::Word(w) if !is_keyword(w) => w.clone(),
            _ => return Err(token.unexpected(EXPECTED)),
        };
        let column = token.column;
        let comparison = match self.peek().map(|t| &t.tok) {
            Some(Tok::Eq) => Some(false),
            Some(Tok::Ne) => Some(true),
            _ => None,
        };
        let flag = match word.as_str() {
            "online" => Some(Flag::Online),
            "drifted" => Some(Flag::Drifted),
            "all" | "*" => Some(Flag::All),
            _ => None,
        };
        if let Some(flag) = flag {
            if comparison.is_some() {
                return Err(FilterError::FlagWithValue {
                    field: word,
                    column,
                });
            }
            return Ok(Filter::Flag(flag));
        }
        let field = match word.as_str() {
            "id" => Field::Id,
            "hw" | "hardware" => Field::Hardware,
            "version" => Field::Version,
            "digest" => Field::Digest,
            "result" => Field::Result,
            w => match w.strip_prefix("label:") {
                Some(key) if !key.is_empty() => Field::Label(key.to_string()),
                _ => {
                    // `label:"key with spaces"`: the key is the next token.
                    if w == "label:"
                        && let Some(Tok::Quoted(key)) = self.peek().map(|t| t.tok.clone())
                    {
                        self.pos += 1;
                        return self.comparison(Field::Label(key), word, column);
                    }
                    return Err(FilterError::UnknownField {
                        field: word,
                        column,
                    });
                }
            },
        };
        self.comparison(field, word, column)
    }

    fn comparison(
        &mut self,
        field: Field,
        word: String,
        column: usize,
    ) -> Result<Filter, FilterError> {
        let negated = match self.peek().map(|t| &t.tok) {
            Some(Tok::Eq) => false,
            Some(Tok::Ne) => true,
            _ => {
                return Err(FilterError::MissingComparison {
                    field: word,
                    column,
                });
            }
        };
        self.pos += 1;
        let value = self.next("a value")?;
        let value = match value.tok {
            Tok::Word(w) => w,
            Tok::Quoted(q) => q,
            _ => return Err(value.unexpected("a value")),
        };
        Ok(Filter::Compare {
            field,
            negated,
            value,
        })
    }
}
