//! The reference model of the worker-output line framer, shared by the
//! property tests (tests/framing.rs) and the `framer` fuzz target
//! (fuzz/src/lib.rs), which both include this file with `#[path]`.

use clearify_workerd::logs::{Line, LineFramer};

/// What the framer must produce for `stream` with chunks of `max` bytes:
/// the lines split on `\n`, a `\r` right before a `\n` removed, each line
/// cut into chunks of `max` bytes (the second and later ones `continued`).
pub fn expected_lines(stream: &[u8], max: usize) -> Vec<Line> {
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    let last = parts.pop().unwrap_or_default();
    let mut logical: Vec<&[u8]> = parts
        .into_iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    if !last.is_empty() {
        logical.push(last);
    }
    for l in logical {
        if l.is_empty() {
            out.push(Line {
                bytes: Vec::new(),
                continued: false,
            });
        }
        for (i, chunk) in l.chunks(max).enumerate() {
            out.push(Line {
                bytes: chunk.to_vec(),
                continued: i > 0,
            });
        }
    }
    out
}

/// Frames `stream`, fed in the pieces that `cuts` (sorted offsets) make.
pub fn frame_in_pieces(stream: &[u8], max: usize, cuts: &[usize]) -> Vec<Line> {
    let mut f = LineFramer::new(max);
    let mut out = Vec::new();
    let mut from = 0;
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        let c = c.clamp(from, stream.len());
        out.extend(f.feed(&stream[from..c]));
        assert!(f.pending() <= max + 1, "{} bytes held", f.pending());
        from = c;
    }
    out.extend(f.finish());
    assert_eq!(f.pending(), 0);
    out
}
