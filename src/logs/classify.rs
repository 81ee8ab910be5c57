//! The priority classifier: which lines are Celery log headers (and their
//! level as a syslog priority), Python warnings, traceback starts and
//! continuation lines. Pure functions on one line's bytes.

/// Skips ANSI SGR/CSI escape sequences at the start of a line (Celery colours
/// its records when it thinks it writes to a terminal).
fn skip_ansi(mut s: &[u8]) -> &[u8] {
    while s.len() >= 2 && s[0] == 0x1b && s[1] == b'[' {
        match s[2..].iter().position(|b| (0x40..=0x7e).contains(b)) {
            Some(end) => s = &s[2 + end + 1..],
            None => return s,
        }
    }
    s
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The syslog priority of a Celery log header line, or `None` when the
/// line is not one.
///
/// Celery's default formats are `[%(asctime)s: %(levelname)s/%(processName)s]
/// %(message)s` and, for task loggers, the same prefix followed by
/// `%(task_name)s[%(task_id)s]: %(message)s`, e.g.
/// `[2024-05-01 12:00:00,123: ERROR/ForkPoolWorker-1] Task demo.fail[…] raised …`.
/// A header is `[`, an asctime starting with a digit, `: `, an upper-case
/// level name, `/`, a process name and `]`. Levels: CRITICAL and FATAL → 2,
/// ERROR → 3, WARNING/WARN → 4, INFO → 6, DEBUG → 7, any other upper-case
/// name → 6.
pub fn celery_priority(line: &[u8]) -> Option<u8> {
    let s = skip_ansi(line);
    if s.first() != Some(&b'[') {
        return None;
    }
    let head = &s[..s.len().min(256)];
    let close = head.iter().position(|&b| b == b']')?;
    let inner = &s[1..close];
    if !inner.first()?.is_ascii_digit() {
        return None;
    }
    let colon = find(inner, b": ")?;
    let after = &inner[colon + 2..];
    let slash = after.iter().position(|&b| b == b'/')?;
    let level = &after[..slash];
    if level.is_empty() || !level.iter().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    if slash + 1 >= after.len() {
        return None; // no process name
    }
    Some(match level {
        b"CRITICAL" | b"FATAL" => 2,
        b"ERROR" => 3,
        b"WARNING" | b"WARN" => 4,
        b"INFO" => 6,
        b"DEBUG" => 7,
        _ => 6,
    })
}

/// The priority of a single line: its Celery level, or 6 (info).
pub fn priority_of(line: &[u8]) -> u8 {
    celery_priority(line).unwrap_or(6)
}

const TRACEBACK: &[u8] = b"Traceback (most recent call last):";
pub(super) const CHAIN_SENTENCES: [&[u8]; 2] = [
    b"During handling of the above exception, another exception occurred:",
    b"The above exception was the direct cause of the following exception:",
];

pub(super) fn is_traceback_start(line: &[u8]) -> bool {
    line.starts_with(TRACEBACK)
}

pub(super) fn is_indented(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// A Python warning as printed by `warnings.showwarning`:
/// `<file>:<lineno>: <Category>Warning: <message>`.
pub(super) fn is_python_warning(line: &[u8]) -> bool {
    let mut from = 0;
    while let Some(p) = find(&line[from..], b": ") {
        let at = from + p;
        // `:<digits>` right before this ": "
        let before = &line[..at];
        let digits = before
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 && before.len() > digits && before[before.len() - digits - 1] == b':' {
            let rest = &line[at + 2..];
            let ident_len = rest
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'.')
                .count();
            let ident = &rest[..ident_len];
            if ident.ends_with(b"Warning") && rest.get(ident_len) == Some(&b':') {
                return true;
            }
        }
        from = at + 2;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celery_levels_map_to_syslog_priorities() {
        let p = |s: &str| celery_priority(s.as_bytes());
        assert_eq!(
            p("[2024-05-01 12:00:00,123: ERROR/MainProcess] message"),
            Some(3)
        );
        assert_eq!(
            p("[2024-05-01 12:00:00,123: WARNING/ForkPoolWorker-1] text"),
            Some(4)
        );
        assert_eq!(
            p(
                "[2024-05-01 12:00:00,123: INFO/ForkPoolWorker-2] Task demo.add[0c1b] succeeded in 0.01s: 3"
            ),
            Some(6)
        );
        assert_eq!(
            p("[2024-05-01 12:00:00,123: DEBUG/MainProcess] | Worker: Preparing bootsteps."),
            Some(7)
        );
        assert_eq!(
            p("[2024-05-01 12:00:00,123: CRITICAL/MainProcess] Unrecoverable error"),
            Some(2)
        );
        assert_eq!(p("[2024-05-01 12:00:00,123: FATAL/MainProcess] x"), Some(2));
        assert_eq!(
            p("[2024-05-01 12:00:00,123: NOTICE/MainProcess] x"),
            Some(6)
        );
        assert_eq!(
            p("\x1b[1;31m[2024-05-01 12:00:00,123: ERROR/MainProcess] coloured\x1b[0m"),
            Some(3)
        );
        for not_header in [
            "plain text",
            "",
            "[tasks]",
            " -------------- [queues]",
            "[2024-05-01 12:00:00,123] no level",
            "[config: ERROR/x] no timestamp",
            "[2024-05-01 12:00:00,123: error/MainProcess] lower case",
            "[2024-05-01 12:00:00,123: ERROR/] no process",
            "x [2024-05-01 12:00:00,123: ERROR/MainProcess] not at start",
            "Traceback (most recent call last):",
        ] {
            assert_eq!(p(not_header), None, "{not_header:?}");
            assert_eq!(priority_of(not_header.as_bytes()), 6);
        }
        assert_eq!(
            priority_of(b"[2024-05-01 12:00:00,123: ERROR/MainProcess] m"),
            3
        );
    }

    #[test]
    fn python_warning_headers_are_recognised() {
        assert!(is_python_warning(
            b"/x/celery/platforms.py:893: SecurityWarning: You're running the worker"
        ));
        assert!(is_python_warning(b"app.py:1: DeprecationWarning: old"));
        assert!(!is_python_warning(b"ratio 1:2: SomeWarning fine"));
        assert!(!is_python_warning(b"app.py:1: KeyError: 'x'"));
    }
}
