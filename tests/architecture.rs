//! The architecture rules of docs/ARCHITECTURE.md, checked on the source:
//!
//! - (a) no import cycles: between the top-level modules (app, broker, cli,
//!   config, control, logs, metrics, model, plan, supervisor, sys), and between the
//!   sibling modules inside each of them (e.g. `supervisor::machine` and
//!   `supervisor::backoff`). A parent and its own children (a `mod.rs` and
//!   the files next to it) may refer to each other; test code does not
//!   count;
//! - (b) nothing under `src/sys/` or `src/model/` imports `supervisor`,
//!   `control` or `cli`;
//! - (c) `src/model/` and `src/metrics/` (the pure renderer: it may import
//!   `model` and `control::protocol`) do no I/O: no `tokio`, `std::fs`,
//!   `std::net`, `std::process`, `nix` or `libc`;
//! - (d) no source file is over [`MAX_LINES`] lines, except unit-test files
//!   (`tests.rs`, `*_tests.rs`, and files declared `#[cfg(test)] mod x;`).
//!
//! Each file is parsed with `syn`. An import is any path the code names:
//! `use` trees (with their `{...}` groups expanded) and paths written inline
//! (`crate::sys::process::spawn`, `super::protocol::MAX_FRAME`), also in
//! macro bodies and attribute arguments, never in comments or strings.
//! Each finding names the file, the line and the path that breaks the rule.
//!
//! The checker itself is tested below on small in-memory trees, so a rule
//! that stopped finding anything would fail here too.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::visit::{self, Visit};

/// The longest a non-test source file may be.
const MAX_LINES: usize = 700;

/// Top-level modules that `sys` and `model` must not import.
const UPPER: [&str; 3] = ["supervisor", "control", "cli"];

/// Top-level modules that do no I/O.
const PURE: [&str; 2] = ["model", "metrics"];

/// What the [`PURE`] modules must not use: I/O and the runtime.
const IO_PATHS: &str = "tokio, std::fs, std::net, std::process, nix, libc";

// ------------------------------------------------------------------ collecting

/// One path a file names.
struct Import {
    file: String,
    /// As written, e.g. `super::protocol::Request`.
    written: Vec<String>,
    line: usize,
    /// The module it is named in.
    module: Vec<String>,
    /// Inside `#[cfg(test)]` code or a unit-test file.
    test: bool,
}

/// Walks a file's syntax tree for the paths it names and its inline modules.
#[derive(Default)]
struct Collector {
    file: String,
    /// The current module: the file's, then `mod x { ... }` inside it.
    module: Vec<String>,
    /// How many `#[cfg(test)]` items (or test files) are around the current one.
    test: usize,
    imports: Vec<Import>,
    inline_modules: Vec<Vec<String>>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

fn line(span: Span) -> usize {
    span.start().line
}

impl Collector {
    fn push(&mut self, written: Vec<String>, line: usize) {
        let (file, module, test) = (self.file.clone(), self.module.clone(), self.test > 0);
        self.imports.push(Import {
            file,
            written,
            line,
            module,
            test,
        });
    }

    /// Runs `walk` on an item, as test code if it is `#[cfg(test)]`.
    fn scoped(&mut self, attrs: &[syn::Attribute], walk: impl FnOnce(&mut Self)) {
        let test = usize::from(is_cfg_test(attrs));
        self.test += test;
        walk(self);
        self.test -= test;
    }

    /// The paths (`a::b...`) in tokens that syn leaves unparsed: macro
    /// bodies and attribute arguments.
    fn scan(&mut self, tokens: TokenStream) {
        let toks: Vec<TokenTree> = tokens.into_iter().collect();
        let colon =
            |k: usize| matches!(toks.get(k), Some(TokenTree::Punct(p)) if p.as_char() == ':');
        let mut i = 0;
        while let Some(tok) = toks.get(i) {
            match tok {
                TokenTree::Group(g) => self.scan(g.stream()),
                TokenTree::Ident(first) => {
                    let mut path = vec![first.to_string()];
                    while colon(i + 1)
                        && colon(i + 2)
                        && let Some(TokenTree::Ident(next)) = toks.get(i + 3)
                    {
                        path.push(next.to_string());
                        i += 3;
                    }
                    if path.len() > 1 {
                        self.push(path, line(first.span()));
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// The leaf paths of a use tree with the line each starts on, e.g.
/// `crate::{a::{b, c}, d as e, f::{self}}` gives `crate::a::b`,
/// `crate::a::c`, `crate::d`, `crate::f`.
fn use_paths(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    start: Option<usize>,
) -> Vec<(Vec<String>, usize)> {
    let at = |span: Span| start.unwrap_or_else(|| line(span));
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            let out = use_paths(&p.tree, prefix, Some(at(p.ident.span())));
            prefix.pop();
            out
        }
        syn::UseTree::Name(syn::UseName { ident })
        | syn::UseTree::Rename(syn::UseRename { ident, .. }) => {
            let mut path = prefix.clone();
            if ident != "self" {
                path.push(ident.to_string());
            }
            vec![(path, at(ident.span()))]
        }
        syn::UseTree::Glob(g) => vec![(prefix.clone(), at(g.star_token.spans[0]))],
        syn::UseTree::Group(g) => g
            .items
            .iter()
            .flat_map(|t| use_paths(t, prefix, None))
            .collect(),
    }
}

/// Visits the items that may be `#[cfg(test)]` as test code when they are.
macro_rules! test_scoped {
    ($($visit:ident: $node:ident),*) => {
        $(fn $visit(&mut self, n: &'ast syn::$node) {
            self.scoped(&n.attrs, |s| visit::$visit(s, n));
        })*
    };
}

impl<'ast> Visit<'ast> for Collector {
    test_scoped!(visit_item_fn: ItemFn, visit_item_impl: ItemImpl, visit_item_struct: ItemStruct,
        visit_item_enum: ItemEnum, visit_item_const: ItemConst, visit_item_static: ItemStatic,
        visit_item_type: ItemType, visit_item_trait: ItemTrait, visit_item_macro: ItemMacro,
        visit_impl_item_fn: ImplItemFn, visit_impl_item_const: ImplItemConst,
        visit_trait_item_fn: TraitItemFn, visit_field: Field, visit_variant: Variant,
        visit_local: Local, visit_stmt_macro: StmtMacro);

    fn visit_item_mod(&mut self, n: &'ast syn::ItemMod) {
        // `mod x;` is read in `Crate::new`.
        if n.content.is_some() {
            self.module.push(n.ident.to_string());
            self.inline_modules.push(self.module.clone());
            self.scoped(&n.attrs, |s| visit::visit_item_mod(s, n));
            self.module.pop();
        }
    }

    fn visit_item_use(&mut self, n: &'ast syn::ItemUse) {
        self.scoped(&n.attrs, |s| {
            for (path, line) in use_paths(&n.tree, &mut Vec::new(), None) {
                s.push(path, line);
            }
        });
    }

    fn visit_path(&mut self, n: &'ast syn::Path) {
        // An inline path that names a module has two segments or more.
        if n.segments.len() > 1 {
            let written = n.segments.iter().map(|s| s.ident.to_string()).collect();
            self.push(written, line(n.segments[0].ident.span()));
        }
        visit::visit_path(self, n);
    }

    fn visit_macro(&mut self, n: &'ast syn::Macro) {
        visit::visit_macro(self, n);
        self.scan(n.tokens.clone());
    }

    fn visit_meta_list(&mut self, n: &'ast syn::MetaList) {
        visit::visit_meta_list(self, n);
        self.scan(n.tokens.clone());
    }
}

// ------------------------------------------------------------------ checking

struct Crate {
    modules: BTreeSet<Vec<String>>,
    imports: Vec<Import>,
    /// Parse errors and long files.
    findings: Vec<String>,
}

/// The module path of a file under `src/`: `src/lib.rs` is the root,
/// `src/a/mod.rs` and `src/a.rs` are `a`, `src/a/b.rs` is `a::b`; a
/// binary `src/bin/x.rs` is `bin::x` (it imports the crate as
/// `clearify_workerd::`, and nothing imports it).
fn module_of(file: &str) -> Option<Vec<String>> {
    let rel = file.strip_prefix("src/")?.strip_suffix(".rs")?;
    let mut parts: Vec<String> = rel.split('/').map(String::from).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts)
}

impl Crate {
    fn new(sources: &[(String, String)]) -> Crate {
        let parsed: Vec<_> = sources
            .iter()
            .filter_map(|(name, text)| Some((name, text, module_of(name)?, syn::parse_file(text))))
            .collect();
        // `#[cfg(test)] mod x;` is test code; `#[path = "x_tests.rs"] mod x;`
        // makes that file module `x`.
        let mut test_modules = BTreeSet::new();
        let mut moved: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for (name, _, module, ast) in &parsed {
            for item in ast.iter().flat_map(|ast| &ast.items) {
                let syn::Item::Mod(m @ syn::ItemMod { content: None, .. }) = item else {
                    continue;
                };
                let module = [module.as_slice(), &[m.ident.to_string()]].concat();
                let path = m.attrs.iter().find(|a| a.path().is_ident("path"));
                if let Some(Ok(nv)) = path.map(|a| a.meta.require_name_value())
                    && let syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(path),
                        ..
                    }) = &nv.value
                {
                    moved.insert(Path::new(name).with_file_name(path.value()), module.clone());
                }
                if is_cfg_test(&m.attrs) {
                    test_modules.insert(module);
                }
            }
        }
        let (mut modules, mut imports, mut findings) = (BTreeSet::new(), Vec::new(), Vec::new());
        for (name, text, module, ast) in parsed {
            let module = moved.remove(Path::new(name)).unwrap_or(module);
            let test = name.ends_with("/tests.rs")
                || name.ends_with("_tests.rs")
                || (1..=module.len()).any(|k| test_modules.contains(&module[..k]));
            let lines = text.lines().count();
            if !test && lines > MAX_LINES {
                findings.push(format!(
                    "{name}: {lines} lines, more than {MAX_LINES} (split it; unit tests may go in a sibling tests.rs)"
                ));
            }
            modules.insert(module.clone());
            let mut found = Collector {
                file: name.clone(),
                module,
                test: usize::from(test),
                ..Collector::default()
            };
            match ast {
                Ok(ast) => found.visit_file(&ast),
                Err(e) => findings.push(format!("{name}:{}: does not parse: {e}", line(e.span()))),
            }
            modules.extend(found.inline_modules);
            imports.extend(found.imports);
        }
        Crate {
            modules,
            imports,
            findings,
        }
    }

    /// The module that `written`, named in module `from`, leads to (the
    /// longest prefix that is a module); none for external crates.
    fn resolve(&self, from: &[String], written: &[String]) -> Option<Vec<String>> {
        let (first, rest) = written.split_first()?;
        let mut m = match first.as_str() {
            "crate" | "clearify_workerd" => rest.to_vec(),
            "super" => {
                let ups = written.iter().take_while(|s| *s == "super").count();
                [&from[..from.len().checked_sub(ups)?], &written[ups..]].concat()
            }
            "self" => [from, rest].concat(),
            // A child module named without `self::` (2018 paths).
            _ if self.modules.contains(&[from, &written[..1]].concat()) => [from, written].concat(),
            _ => return None,
        };
        while !self.modules.contains(&m) {
            m.pop()?;
        }
        Some(m)
    }

    /// Every finding, one line each.
    fn check(&self) -> Vec<String> {
        let mut findings = self.findings.clone();
        // scope -> (from, to) -> an example "file:line: path".
        let mut edges: BTreeMap<Vec<String>, BTreeMap<(String, String), String>> = BTreeMap::new();
        for imp in &self.imports {
            let written = imp.written.join("::");
            let at = format!("{}:{}: {written}", imp.file, imp.line);
            let top = imp.module.first().map_or("", String::as_str);
            if PURE.contains(&top)
                && IO_PATHS
                    .split(", ")
                    .any(|io| format!("{written}::").starts_with(&format!("{io}::")))
            {
                findings.push(format!(
                    "{at}: src/{top}/ does no I/O and no tokio (no {IO_PATHS})"
                ));
            }
            let Some(to) = self.resolve(&imp.module, &imp.written) else {
                continue;
            };
            let to_top = to.first().map_or("", String::as_str);
            if matches!(top, "sys" | "model") && UPPER.contains(&to_top) {
                findings.push(format!(
                    "{at}: src/{top}/ must not import {to_top} (an upward import)"
                ));
            }
            let from = &imp.module;
            let k = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if !imp.test && k < from.len() && k < to.len() {
                let edge = (from[k].clone(), to[k].clone());
                edges
                    .entry(from[..k].to_vec())
                    .or_default()
                    .entry(edge)
                    .or_insert(at);
            }
        }
        for (scope, graph) in &edges {
            let name = |m: &str| [scope.as_slice(), &[m.to_string()]].concat().join("::");
            for cycle in cycles(graph) {
                let ring: Vec<String> =
                    cycle.iter().chain(cycle.first()).map(|m| name(m)).collect();
                let mut s = format!("import cycle: {}", ring.join(" -> "));
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

/// The shortest cycle through each node that is on one (breadth-first
/// search back to it), each cycle once, starting at its smallest node.
fn cycles(graph: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in graph.keys() {
        adj.entry(a).or_default().push(b);
    }
    let mut out: Vec<Vec<String>> = Vec::new();
    for &start in adj.keys() {
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(v) = queue.pop_front() {
            for &w in adj.get(v).into_iter().flatten() {
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
        let Some(mut v) = last else { continue };
        let mut cycle = vec![v.to_string()];
        while v != start {
            v = prev[v];
            cycle.push(v.to_string());
        }
        cycle.reverse();
        let min = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap_or(0);
        cycle.rotate_left(min);
        if !out.contains(&cycle) {
            out.push(cycle);
        }
    }
    out
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
        "metrics",
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
fn checker_reads_paths_in_macro_bodies() {
    let found = check(&[
        LIB,
        ("src/a.rs", "pub struct X;\npub fn f() { crate::b::g(); }"),
        (
            "src/b.rs",
            "pub fn g() {\n    tracing::info!(x = ?crate::a::X, \"crate::c::Y\");\n}",
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("import cycle: a -> b -> a"),
        "{found:?}"
    );
    assert!(found[0].contains("src/b.rs:2: crate::a::X"), "{found:?}");
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
            "pub struct X; pub fn g() { crate::a::f(\"\"); crate::c::h(); }",
        ),
        ("src/c/mod.rs", "pub fn h() {}\n#[cfg(test)]\nmod tests;"),
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
fn checker_resolves_super_in_a_path_test_file_from_its_declared_module() {
    let found = check(&[
        LIB,
        ("src/sys/mod.rs", "pub mod accounts;"),
        (
            "src/sys/accounts.rs",
            "#[cfg(test)]\n#[path = \"accounts_tests.rs\"]\nmod tests;",
        ),
        // sys::accounts::tests: three `super` lead to the crate root.
        (
            "src/sys/accounts_tests.rs",
            "use super::super::super::supervisor::X;",
        ),
        ("src/supervisor.rs", "pub struct X;"),
    ]);
    assert_eq!(
        found,
        [
            "src/sys/accounts_tests.rs:1: super::super::super::supervisor::X: src/sys/ must not import supervisor (an upward import)"
        ]
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
fn checker_reports_a_file_it_cannot_parse() {
    let found = check(&[LIB, ("src/a.rs", "pub fn f() {}\npub fn g( {}")]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("src/a.rs:2: does not parse: "),
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
