//! The architecture rules of docs/ARCHITECTURE.md, checked on the source:
//!
//! - (a) no import cycles: between the top-level modules (app, broker, cli,
//!   config, control, logs, model, plan, supervisor, sys), and between the
//!   sibling modules inside each of them (e.g. `supervisor::machine` and
//!   `supervisor::backoff`). A parent and its own children (a `mod.rs` and
//!   the files next to it) may refer to each other; test code does not
//!   count;
//! - (b) nothing under `src/sys/` or `src/model/` imports `supervisor`,
//!   `control` or `cli`;
//! - (c) `src/model/` does no I/O: no `tokio`, `std::fs`, `std::net`,
//!   `std::process`, `nix` or `libc`;
//! - (d) no source file is over [`MAX_LINES`] lines, except unit-test files
//!   (`tests.rs`, `*_tests.rs`).
//!
//! An import is any path the code names: `use` lines (with their `{...}`
//! groups expanded) and paths written inline (`crate::sys::process::spawn`,
//! `super::protocol::MAX_FRAME`), outside comments and string literals.
//! Each finding names the file, the line and the path that breaks the rule.
//!
//! The checker itself is tested below on small in-memory trees, so a rule
//! that stopped finding anything would fail here too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// The longest a non-test source file may be.
const MAX_LINES: usize = 700;

/// Top-level modules that `sys` and `model` must not import.
const UPPER: [&str; 3] = ["supervisor", "control", "cli"];

/// What `model` must not use: I/O and the runtime.
const IO_PATHS: [&[&str]; 6] = [
    &["tokio"],
    &["std", "fs"],
    &["std", "net"],
    &["std", "process"],
    &["nix"],
    &["libc"],
];

/// Crates whose paths are recorded (for rule c); other external crates are
/// skipped.
const EXTERNAL_ROOTS: [&str; 4] = ["std", "tokio", "nix", "libc"];

// ------------------------------------------------------------------ lexing

/// `text` with comments, string and char literals blanked out (newlines
/// kept, so line numbers stay right).
fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && !prev_is_ident(&b, i)
            && raw_string_start(&b, i + usize::from(c == 'b') + 1).is_some()
        {
            let start = i + usize::from(c == 'b') + 1;
            let hashes = raw_string_start(&b, start).unwrap_or(0);
            // Skip the prefix, the hashes and the opening quote.
            let body = start + hashes + 1;
            for &ch in &b[i..body] {
                out.push(blank(ch));
            }
            i = body;
            while i < b.len() {
                if b[i] == '"' && (1..=hashes).all(|k| b.get(i + k) == Some(&'#')) {
                    for _ in 0..=hashes {
                        out.push(' ');
                    }
                    i += hashes + 1;
                    break;
                }
                out.push(blank(b[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() {
                if b[i] == '\\' {
                    out.push(' ');
                    if let Some(&e) = b.get(i + 1) {
                        out.push(blank(e));
                    }
                    i += 2;
                    continue;
                }
                if b[i] == '"' {
                    out.push(' ');
                    i += 1;
                    break;
                }
                out.push(blank(b[i]));
                i += 1;
            }
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{1b}') or a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..b.len()).find(|&k| b[k] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    for _ in i..=end {
                        out.push(' ');
                    }
                    i = end + 1;
                }
                None => {
                    out.push(' ');
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// At `i` (after `r`): the number of `#` before a `"`, when this is a raw
/// string.
fn raw_string_start(b: &[char], i: usize) -> Option<usize> {
    let hashes = b[i.min(b.len())..]
        .iter()
        .take_while(|&&c| c == '#')
        .count();
    (b.get(i + hashes) == Some(&'"')).then_some(hashes)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tok {
    text: String,
    line: usize,
}

/// Identifiers, `::` and single punctuation characters, with their lines.
fn tokens(stripped: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let chars: Vec<char> = stripped.chars().collect();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let mut text: String = chars[start..i].iter().collect();
            // r#ident
            if text == "r" && chars.get(i) == Some(&'#') {
                let s2 = i + 1;
                let mut j = s2;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                text = chars[s2..j].iter().collect();
                i = j;
            }
            toks.push(Tok { text, line });
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            toks.push(Tok {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            toks.push(Tok {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    toks
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

// ------------------------------------------------------------------ parsing

/// One path a file names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    /// As written, e.g. `super::protocol::Request`.
    written: Vec<String>,
    line: usize,
    /// The module it was written in (file module plus inline modules).
    module: Vec<String>,
    /// Inside `#[cfg(test)]` code.
    test: bool,
}

/// A source file, parsed: its module path, the inline modules it declares,
/// the file modules it declares `#[cfg(test)]`, and the paths it names.
#[derive(Debug)]
struct Parsed {
    file: String,
    module: Vec<String>,
    lines: usize,
    inline_modules: Vec<Vec<String>>,
    test_children: Vec<String>,
    imports: Vec<Import>,
}

/// The module path of a file under `src/`: `src/lib.rs` is the root,
/// `src/a/mod.rs` and `src/a.rs` are `a`, `src/a/b.rs` is `a::b`; a
/// binary `src/bin/x.rs` is `bin::x` (it imports the crate as
/// `clearify_workerd::`, and nothing imports it).
fn module_of(file: &str) -> Option<Vec<String>> {
    let rel = file.strip_prefix("src/")?;
    let rel = rel.strip_suffix(".rs")?;
    let mut parts: Vec<String> = rel.split('/').map(String::from).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts)
}

fn parse(file: &str, text: &str) -> Option<Parsed> {
    let module = module_of(file)?;
    let toks = tokens(&strip(text));
    let mut p = Parsed {
        file: file.to_string(),
        module: module.clone(),
        lines: text.lines().count(),
        inline_modules: Vec::new(),
        test_children: Vec::new(),
        imports: Vec::new(),
    };
    // Open scopes: (brace depth after the `{`, inline module name, test).
    let mut scopes: Vec<(usize, Option<String>, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut pending_test = false;
    let mut pending_mod: Option<String> = None;
    let current = |scopes: &Vec<(usize, Option<String>, bool)>| -> (Vec<String>, bool) {
        let mut m = module.clone();
        let mut test = false;
        for (_, name, t) in scopes {
            if let Some(n) = name {
                m.push(n.clone());
            }
            test |= *t;
        }
        (m, test)
    };
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].text.as_str();
        match t {
            "#" => {
                // #[cfg(test)] (also #![cfg(test)] is not used here).
                let words: Vec<&str> = toks[i + 1..(i + 7).min(toks.len())]
                    .iter()
                    .map(|t| t.text.as_str())
                    .collect();
                if words.starts_with(&["[", "cfg", "(", "test", ")", "]"]) {
                    pending_test = true;
                    i += 7;
                    continue;
                }
            }
            "mod" => {
                if let (Some(name), Some(after)) = (toks.get(i + 1), toks.get(i + 2)) {
                    if after.text == "{" {
                        pending_mod = Some(name.text.clone());
                        i += 2;
                        continue;
                    }
                    if after.text == ";" {
                        if pending_test {
                            p.test_children.push(name.text.clone());
                        }
                        pending_test = false;
                        i += 3;
                        continue;
                    }
                }
            }
            "{" => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    let (mut m, _) = current(&scopes);
                    m.push(name.clone());
                    p.inline_modules.push(m);
                    scopes.push((depth, Some(name), pending_test));
                } else if pending_test {
                    scopes.push((depth, None, true));
                }
                pending_test = false;
            }
            "}" => {
                if scopes.last().is_some_and(|s| s.0 == depth) {
                    scopes.pop();
                }
                depth = depth.saturating_sub(1);
            }
            ";" => pending_test = false,
            "use" => {
                let (m, test) = current(&scopes);
                let test = test || pending_test;
                let end = (i..toks.len())
                    .find(|&k| toks[k].text == ";")
                    .unwrap_or(toks.len());
                for (path, line) in use_tree(&toks[i + 1..end]) {
                    p.imports.push(Import {
                        written: path,
                        line,
                        module: m.clone(),
                        test,
                    });
                }
                pending_test = false;
                i = end + 1;
                continue;
            }
            _ if is_ident(t)
                && toks.get(i + 1).is_some_and(|n| n.text == "::")
                && !(i > 0 && toks[i - 1].text == "::") =>
            {
                // An inline path: ident (:: ident)*.
                let mut path = vec![t.to_string()];
                let mut k = i + 1;
                while toks.get(k).is_some_and(|n| n.text == "::")
                    && toks.get(k + 1).is_some_and(|n| is_ident(&n.text))
                {
                    path.push(toks[k + 1].text.clone());
                    k += 2;
                }
                let (m, test) = current(&scopes);
                p.imports.push(Import {
                    written: path,
                    line: toks[i].line,
                    module: m,
                    test: test || pending_test,
                });
                i = k;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Some(p)
}

/// The leaf paths of a use tree (the tokens between `use` and `;`), e.g.
/// `crate::{a::{b, c}, d as e}` gives `crate::a::b`, `crate::a::c`,
/// `crate::d`.
fn use_tree(toks: &[Tok]) -> Vec<(Vec<String>, usize)> {
    fn walk(toks: &[Tok], i: &mut usize, prefix: &[String], out: &mut Vec<(Vec<String>, usize)>) {
        let mut path = prefix.to_vec();
        let line = toks.get(*i).map_or(0, |t| t.line);
        while let Some(t) = toks.get(*i) {
            match t.text.as_str() {
                "::" => *i += 1,
                "{" => {
                    *i += 1;
                    loop {
                        match toks.get(*i).map(|t| t.text.as_str()) {
                            None => return,
                            Some("}") => {
                                *i += 1;
                                return;
                            }
                            Some(",") => *i += 1,
                            Some(_) => walk(toks, i, &path, out),
                        }
                    }
                }
                "," | "}" => break,
                "*" => {
                    *i += 1;
                    out.push((path.clone(), line));
                    return;
                }
                "as" => {
                    *i += 2;
                    out.push((path.clone(), line));
                    return;
                }
                s if is_ident(s) => {
                    path.push(s.to_string());
                    *i += 1;
                }
                _ => *i += 1,
            }
        }
        if path.len() > prefix.len() {
            out.push((path, line));
        }
    }
    // Skip a visibility: `pub`, `pub(crate)`, `pub(super)`, `pub(in path)`.
    let mut start = 0;
    if toks.first().is_some_and(|t| t.text == "pub") {
        start = 1;
        if toks.get(1).is_some_and(|t| t.text == "(") {
            start = (1..toks.len())
                .find(|&k| toks[k].text == ")")
                .map_or(toks.len(), |k| k + 1);
        }
    }
    let mut out = Vec::new();
    let mut i = start;
    walk(toks, &mut i, &[], &mut out);
    out
}

// ------------------------------------------------------------------ checking

/// Where a path leads: a module of this crate (and how far the path named
/// an item in it), or an external crate's path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Module(Vec<String>),
    External(Vec<String>),
}

struct Crate {
    files: Vec<Parsed>,
    modules: BTreeSet<Vec<String>>,
    test_modules: BTreeSet<Vec<String>>,
}

impl Crate {
    fn new(sources: &[(String, String)]) -> Crate {
        let files: Vec<Parsed> = sources.iter().filter_map(|(f, t)| parse(f, t)).collect();
        let mut modules = BTreeSet::new();
        let mut test_modules = BTreeSet::new();
        for f in &files {
            modules.insert(f.module.clone());
            for m in &f.inline_modules {
                modules.insert(m.clone());
            }
            for child in &f.test_children {
                let mut m = f.module.clone();
                m.push(child.clone());
                test_modules.insert(m);
            }
        }
        Crate {
            files,
            modules,
            test_modules,
        }
    }

    /// Resolves `written`, named in module `from`.
    fn resolve(&self, from: &[String], written: &[String]) -> Option<Target> {
        let first = written.first()?.as_str();
        let abs: Vec<String> = match first {
            "crate" | "clearify_workerd" => written[1..].to_vec(),
            "super" => {
                let mut m = from.to_vec();
                let mut rest = written;
                while rest.first().is_some_and(|s| s == "super") {
                    m.pop()?;
                    rest = &rest[1..];
                }
                m.extend(rest.iter().cloned());
                m
            }
            "self" => {
                let mut m = from.to_vec();
                m.extend(written[1..].iter().cloned());
                m
            }
            _ if EXTERNAL_ROOTS.contains(&first) => {
                return Some(Target::External(written.to_vec()));
            }
            _ => {
                // A child module named without `self::` (2018 paths).
                let mut m = from.to_vec();
                m.push(first.to_string());
                if !self.modules.contains(&m) {
                    return None;
                }
                m.extend(written[1..].iter().cloned());
                m
            }
        };
        // The longest prefix that is a module.
        let mut m = abs;
        while !self.modules.contains(&m) {
            m.pop()?;
        }
        Some(Target::Module(m))
    }

    fn is_test_file(&self, f: &Parsed) -> bool {
        let name = Path::new(&f.file)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        name == "tests.rs"
            || name.ends_with("_tests.rs")
            || (1..=f.module.len()).any(|k| self.test_modules.contains(&f.module[..k]))
    }

    /// Every finding, one line each.
    fn check(&self) -> Vec<String> {
        let mut findings = Vec::new();
        // scope -> (from, to) -> an example "file:line: path".
        let mut edges: BTreeMap<Vec<String>, BTreeMap<(String, String), String>> = BTreeMap::new();
        for f in &self.files {
            let test_file = self.is_test_file(f);
            if !test_file && f.lines > MAX_LINES {
                findings.push(format!(
                    "{}: {} lines, more than {MAX_LINES} (split it; unit tests may go in a sibling tests.rs)",
                    f.file, f.lines
                ));
            }
            let top = f.module.first().map(String::as_str);
            for imp in &f.imports {
                let Some(target) = self.resolve(&imp.module, &imp.written) else {
                    continue;
                };
                let written = imp.written.join("::");
                let at = format!("{}:{}: {written}", f.file, imp.line);
                match &target {
                    Target::External(path) => {
                        if top == Some("model")
                            && IO_PATHS.iter().any(|io| path.starts_with(&to_strings(io)))
                        {
                            findings.push(format!(
                                "{at}: src/model/ does no I/O and no tokio (no tokio, std::fs, std::net, std::process, nix, libc)"
                            ));
                        }
                    }
                    Target::Module(to) => {
                        let to_top = to.first().map(String::as_str);
                        if matches!(top, Some("sys" | "model"))
                            && to_top.is_some_and(|t| UPPER.contains(&t))
                        {
                            findings.push(format!(
                                "{at}: src/{}/ must not import {} (an upward import)",
                                top.unwrap_or_default(),
                                to_top.unwrap_or_default()
                            ));
                        }
                        if test_file || imp.test {
                            continue;
                        }
                        let from = &imp.module;
                        let k = from.iter().zip(to).take_while(|(a, b)| a == b).count();
                        if k < from.len() && k < to.len() {
                            let scope = from[..k].to_vec();
                            edges
                                .entry(scope)
                                .or_default()
                                .entry((from[k].clone(), to[k].clone()))
                                .or_insert(at);
                        }
                    }
                }
            }
        }
        for (scope, graph) in &edges {
            for cycle in cycles(graph) {
                let name = |m: &str| {
                    let mut p = scope.clone();
                    p.push(m.to_string());
                    p.join("::")
                };
                let mut s = format!(
                    "import cycle: {}",
                    cycle
                        .iter()
                        .chain(cycle.first())
                        .map(|m| name(m))
                        .collect::<Vec<_>>()
                        .join(" -> ")
                );
                for (a, b) in cycle.iter().zip(cycle.iter().cycle().skip(1)) {
                    if let Some(ex) = graph.get(&(a.clone(), b.clone())) {
                        let _ = write!(s, "\n    {} -> {}: {ex}", name(a), name(b));
                    }
                }
                findings.push(s);
            }
        }
        findings
    }
}

fn to_strings(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

/// One cycle through each strongly connected component of more than one
/// node (Tarjan), as the list of its nodes in order.
fn cycles(graph: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in graph.keys() {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    // Tarjan's algorithm.
    struct St<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        on: BTreeSet<&'a str>,
        stack: Vec<&'a str>,
        next: usize,
        sccs: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, adj: &BTreeMap<&'a str, Vec<&'a str>>, st: &mut St<'a>) {
        st.index.insert(v, st.next);
        st.low.insert(v, st.next);
        st.next += 1;
        st.stack.push(v);
        st.on.insert(v);
        for &w in adj.get(v).map(Vec::as_slice).unwrap_or(&[]) {
            if !st.index.contains_key(w) {
                visit(w, adj, st);
                let lw = st.low[w];
                let lv = st.low[v];
                st.low.insert(v, lv.min(lw));
            } else if st.on.contains(w) {
                let iw = st.index[w];
                let lv = st.low[v];
                st.low.insert(v, lv.min(iw));
            }
        }
        if st.low[v] == st.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on.remove(w);
                scc.push(w);
                if w == v {
                    break;
                }
            }
            st.sccs.push(scc);
        }
    }
    let mut st = St {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for &v in adj.keys() {
        if !st.index.contains_key(v) {
            visit(v, &adj, &mut st);
        }
    }
    // In each component, the shortest cycle through each of its nodes
    // (BFS), each cycle once.
    let mut out: Vec<Vec<String>> = Vec::new();
    for scc in st.sccs.into_iter().filter(|s| s.len() > 1) {
        let members: BTreeSet<&str> = scc.iter().copied().collect();
        for &start in &members {
            let mut cycle = shortest_cycle(start, &members, &adj);
            // Rotate to its smallest node, to see each cycle once.
            let Some(min) = (0..cycle.len()).min_by_key(|&k| cycle[k].clone()) else {
                continue;
            };
            cycle.rotate_left(min);
            if !out.contains(&cycle) {
                out.push(cycle);
            }
        }
    }
    out
}

/// The shortest cycle from `start` back to it, through `members` only.
fn shortest_cycle(
    start: &str,
    members: &BTreeSet<&str>,
    adj: &BTreeMap<&str, Vec<&str>>,
) -> Vec<String> {
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    let mut last = None;
    'search: while let Some(v) = queue.pop_front() {
        for &w in adj.get(v).map(Vec::as_slice).unwrap_or(&[]) {
            if !members.contains(w) {
                continue;
            }
            if w == start {
                last = Some(v);
                break 'search;
            }
            if !prev.contains_key(w) {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    let mut cycle = Vec::new();
    let mut v = last.unwrap_or(start);
    while v != start {
        cycle.push(v.to_string());
        v = prev.get(v).copied().unwrap_or(start);
    }
    cycle.push(start.to_string());
    cycle.reverse();
    cycle
}

// ------------------------------------------------------------------ the crate

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(root)
                    .expect("under the crate")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path).expect("read a source file");
                out.push((rel, text));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_crate_keeps_the_architecture_rules() {
    let sources = sources();
    assert!(sources.len() > 20, "found the sources: {}", sources.len());
    let krate = Crate::new(&sources);
    for top in [
        "app",
        "broker",
        "cli",
        "config",
        "control",
        "logs",
        "model",
        "plan",
        "supervisor",
        "sys",
    ] {
        assert!(
            krate.modules.contains(&vec![top.to_string()]),
            "module {top} not found: the checker does not see the layout"
        );
    }
    let findings = krate.check();
    assert!(
        findings.is_empty(),
        "{} architecture rule(s) broken (see docs/ARCHITECTURE.md):\n{}",
        findings.len(),
        findings.join("\n")
    );
}

// ------------------------------------------------------------------ the checker

fn check(files: &[(&str, &str)]) -> Vec<String> {
    let owned: Vec<(String, String)> = files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
    Crate::new(&owned).check()
}

const LIB: (&str, &str) = (
    "src/lib.rs",
    "pub mod a; pub mod b; pub mod c; pub mod sys; pub mod model; pub mod supervisor;",
);

#[test]
fn checker_finds_a_cycle_between_top_level_modules() {
    let found = check(&[
        LIB,
        (
            "src/a/mod.rs",
            "use crate::b::{self, Thing};\npub fn f() {}",
        ),
        (
            "src/b.rs",
            "pub struct Thing;\n\nfn g() {\n    crate::c::h();\n}",
        ),
        ("src/c.rs", "pub fn h() { let _ = crate::a::f; }"),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("import cycle: a -> b -> c -> a"),
        "{found:?}"
    );
    assert!(found[0].contains("src/b.rs:4: crate::c::h"), "{found:?}");
    assert!(found[0].contains("src/a/mod.rs:1: crate::b"), "{found:?}");
}

#[test]
fn checker_finds_a_cycle_between_siblings_through_super() {
    let found = check(&[
        LIB,
        ("src/a/mod.rs", "mod x; mod y;\nuse x::X; use y::Y;"),
        ("src/a/x.rs", "use super::y::{Y as Why};\npub struct X;"),
        ("src/a/y.rs", "pub struct Y(super::super::a::x::X);"),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("import cycle: a::x -> a::y -> a::x"),
        "{found:?}"
    );
}

#[test]
fn checker_lets_a_parent_and_its_children_use_each_other() {
    let found = check(&[
        LIB,
        ("src/a/mod.rs", "mod x;\npub use x::X;\npub struct Error;"),
        (
            "src/a/x.rs",
            "use super::Error;\npub struct X(crate::a::Error);",
        ),
        ("src/b.rs", "use crate::a::X;"),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn checker_ignores_comments_strings_and_test_code() {
    let found = check(&[
        LIB,
        (
            "src/a.rs",
            "//! Uses crate::b::X in docs only.\n\
             /* crate::b::Y */\n\
             pub const S: &str = \"crate::b::Z\";\n\
             pub const R: &str = r#\"crate::b::W \"quoted\"\"#;\n\
             pub const C: char = '\\'';\n\
             pub fn f<'a>(s: &'a str) -> &'a str { s }\n\
             #[cfg(test)]\nmod tests {\n    use crate::b::X;\n}",
        ),
        (
            "src/b.rs",
            "pub struct X; pub fn g() { crate::a::f(\"\"); }",
        ),
        ("src/c/mod.rs", "#[cfg(test)]\nmod tests;"),
        ("src/c/tests.rs", "use crate::b::X;"),
        ("src/c/machine_tests.rs", "use crate::b::X;"),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn checker_finds_upward_imports_from_sys_and_model() {
    let found = check(&[
        LIB,
        (
            "src/sys/process.rs",
            "use crate::supervisor::ExitReason;\nuse super::cgroup;",
        ),
        ("src/sys/mod.rs", "pub mod process; pub mod cgroup;"),
        ("src/sys/cgroup.rs", "pub fn f() {}"),
        (
            "src/model/mod.rs",
            "pub fn f() -> crate::cli::Args { todo!() }",
        ),
        ("src/supervisor.rs", "pub struct ExitReason;"),
        ("src/cli.rs", "pub struct Args;"),
    ]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with(
            "src/sys/process.rs:1: crate::supervisor::ExitReason: src/sys/ must not import supervisor"
        ),
        "{found:?}"
    );
    assert!(
        found[1]
            .starts_with("src/model/mod.rs:1: crate::cli::Args: src/model/ must not import cli"),
        "{found:?}"
    );
}

#[test]
fn checker_finds_io_in_model() {
    let found = check(&[
        LIB,
        (
            "src/model/mod.rs",
            "use std::{fmt, fs::File};\nuse std::time::Duration;\n\
             pub fn f() { let _ = std::process::id(); let _ = tokio::spawn; let _ = libc::getpid; }",
        ),
    ]);
    let lines: Vec<&str> = found
        .iter()
        .map(|f| f.split(": src/model/").next().unwrap_or(""))
        .collect();
    assert_eq!(
        lines,
        [
            "src/model/mod.rs:1: std::fs::File",
            "src/model/mod.rs:3: std::process::id",
            "src/model/mod.rs:3: tokio::spawn",
            "src/model/mod.rs:3: libc::getpid",
        ],
        "{found:?}"
    );
}

#[test]
fn checker_finds_long_files_but_not_unit_test_files() {
    let long = "fn f() {}\n".repeat(MAX_LINES + 1);
    let ok = "fn f() {}\n".repeat(MAX_LINES);
    let found = check(&[
        LIB,
        ("src/a.rs", &long),
        ("src/b.rs", &ok),
        ("src/c/tests.rs", &long),
        ("src/c/machine_tests.rs", &long),
        ("src/bin/tool.rs", &long),
    ]);
    let too_long = |f: &str| {
        format!(
            "{f}: {} lines, more than {MAX_LINES} (split it; unit tests may go in a sibling tests.rs)",
            MAX_LINES + 1
        )
    };
    assert_eq!(found, [too_long("src/a.rs"), too_long("src/bin/tool.rs")]);
}
