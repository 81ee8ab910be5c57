//! The text of `clearifyctl doctor`: one aligned line per finding, its
//! fix under it.

use std::fmt::Write as _;

use super::{Finding, Status};
use crate::cli::render::{Newlines, escape};

/// The report: one aligned line per check (`level  name  detail`), detail
/// continuation lines indented under the detail, a `hint:` line under
/// warn and fail, and a summary line. Control characters are escaped
/// ([`escape`]).
pub fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|c| c.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    // Details and hints quote text from outside (`celery report`, the
    // daemon's replies, file names): escaped, one line at a time.
    let esc = |s| escape(s, Newlines::Escape);
    for c in findings {
        let mut lines = c.detail.lines();
        let first = esc(lines.next().unwrap_or(""));
        let _ = writeln!(out, "{:<4}  {:<width$}  {first}", c.status, c.check);
        for l in lines {
            let _ = writeln!(out, "{:<4}  {:<width$}  {}", "", "", esc(l));
        }
        if c.status != Status::Ok
            && let Some(h) = &c.fix
        {
            let _ = writeln!(out, "      hint: {}", esc(h));
        }
    }
    let count = |l: Status| findings.iter().filter(|c| c.status == l).count();
    let _ = writeln!(
        out,
        "\n{} ok, {} warn, {} fail",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
    out
}
