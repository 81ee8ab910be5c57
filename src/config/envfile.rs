//! The `env_file` parser: `KEY=VALUE` lines (workers.toml(5), `env_file`
//! syntax). No error shows any part of a value.

use std::collections::HashMap;
use std::fmt;

use super::schema::{ENV_VALUE_CONTROLS, control_char};

/// A malformed line of an env file. The message never holds any part of
/// a value (nor of a line that has no `=`): env files hold secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The variable, when the line starts with a valid name.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(k) = &self.key {
            write!(f, "variable `{k}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What [`parse_env_line`] reports: column, variable (when known), message.
pub(super) type EnvLineError = (usize, Option<String>, String);

/// Parse the text of an env file: `KEY=VALUE` lines (see the module docs).
/// Returns the variables in file order (a later duplicate overrides), or
/// every bad line.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, Vec<EnvFileError>> {
    let mut vars = Vec::new();
    let mut errors = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        match parse_env_line(raw) {
            Ok(Some(kv)) => vars.push(kv),
            Ok(None) => {}
            Err((column, key, message)) => errors.push(EnvFileError {
                line: line_no,
                column,
                key,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(vars)
    } else {
        Err(errors)
    }
}

/// One env-file line: `Ok(None)` for blanks and comments, `Err((column,
/// variable, message))` when malformed. No error quotes the line.
pub(super) fn parse_env_line(raw: &str) -> Result<Option<(String, String)>, EnvLineError> {
    let line = raw.strip_suffix('\r').unwrap_or(raw);
    let indent = line.len() - line.trim_start().len();
    let body = line.trim_start();
    if body.is_empty() || body.starts_with('#') {
        return Ok(None);
    }
    let col_of = |byte: usize| line[..byte].chars().count() + 1;
    let mut start = indent;
    if let Some(rest) = body.strip_prefix("export ") {
        start += body.len() - rest.len() + (rest.len() - rest.trim_start().len());
    }
    let Some(eq_rel) = line[start..].find('=') else {
        // Name the variable only when the line starts with a valid one;
        // the rest may be a value (`OTHER_URL redis://:pw@h/0`).
        let first = line[start..]
            .split(|c: char| c.is_whitespace())
            .next()
            .filter(|w| is_env_name(w))
            .map(str::to_string);
        return Err((
            col_of(start),
            first,
            "expected KEY=VALUE (no `=` on this line; the line is not shown)".into(),
        ));
    };
    let key = line[start..start + eq_rel].trim_end();
    if !is_env_name(key) {
        return Err((
            col_of(start),
            None,
            "invalid variable name before `=` (use letters, digits and `_`, not starting with a digit; the line is not shown)".into(),
        ));
    }
    let name = || Some(key.to_string());
    let value_start = start + eq_rel + 1;
    let vs = &line[value_start..];
    let lead = vs.len() - vs.trim_start().len();
    let v = vs.trim_start();
    let v_col = col_of(value_start + lead);
    let value = if let Some(inner) = v.strip_prefix('\'') {
        let Some(end) = inner.find('\'') else {
            return Err((v_col, name(), "unterminated single-quoted value".into()));
        };
        check_env_trailer(&inner[end + 1..], v_col).map_err(|(c, m)| (c, name(), m))?;
        inner[..end].to_string()
    } else if let Some(inner) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.char_indices();
        let mut closed = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    closed = Some(i);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    Some((_, '$')) => out.push('$'),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        let Some(end) = closed else {
            return Err((v_col, name(), "unterminated double-quoted value".into()));
        };
        check_env_trailer(&inner[end + 1..], v_col).map_err(|(c, m)| (c, name(), m))?;
        out
    } else {
        let mut value = v;
        if v.starts_with('#') {
            value = "";
        } else if let Some(hash) = v.find(" #").or_else(|| v.find("\t#")) {
            value = &v[..hash];
        }
        value.trim_end().to_string()
    };
    if let Some(why) = control_char(&value, ENV_VALUE_CONTROLS) {
        return Err((v_col, name(), format!("the value {why}")));
    }
    Ok(Some((key.to_string(), value)))
}

pub(super) fn check_env_trailer(rest: &str, col: usize) -> Result<(), (usize, String)> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err((
            col,
            "unexpected text after the closing quote (the value is not shown)".into(),
        ))
    }
}

pub(super) fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The line each variable of an env file was (last) set on.
pub(super) fn env_line_numbers(text: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if let Ok(Some((k, _))) = parse_env_line(line) {
            out.insert(k, n + 1);
        }
    }
    out
}
