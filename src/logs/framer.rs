//! Line framing: splits a worker's byte stream into lines on `\n`, cutting
//! over-long lines into chunks of at most [`MAX_RECORD`] bytes. Pure: no
//! I/O, no time.

/// Largest journal entry MESSAGE we produce; longer lines are split, and a
/// multi-line record is flushed before it would grow beyond this. 48 KiB is
/// journald's own line limit for stdout streams.
pub const MAX_RECORD: usize = 48 * 1024;

/// One framed line (or chunk of an over-long line), without its terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    /// True for the second and later chunks of a line longer than the cap.
    pub continued: bool,
}

/// Splits a byte stream into lines on `\n`.
///
/// A `\r` before the `\n` is removed (other `\r` bytes are kept, one that
/// ends the stream too). A line
/// longer than `max` bytes is cut into chunks of `max` bytes (the last one
/// shorter); no byte is lost. A trailing line without `\n` is returned by
/// [`LineFramer::finish`].
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    max: usize,
    /// A chunk of the current line has already been emitted.
    in_long: bool,
}

impl Default for LineFramer {
    fn default() -> Self {
        LineFramer::new(MAX_RECORD)
    }
}

impl LineFramer {
    /// A framer with a maximum line (chunk) length of `max` bytes (≥ 1).
    pub fn new(max: usize) -> Self {
        LineFramer {
            buf: Vec::new(),
            max: max.max(1),
            in_long: false,
        }
    }

    /// Feeds bytes; returns the lines (and chunks) they complete.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.buf.extend_from_slice(&rest[..i]);
            rest = &rest[i + 1..];
            self.end_line(&mut out, true);
        }
        self.buf.extend_from_slice(rest);
        self.spill(&mut out);
        out
    }

    /// At EOF: returns the unterminated last line, if any.
    pub fn finish(&mut self) -> Vec<Line> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            // No `\n` follows: a final `\r` is output, not a terminator.
            self.end_line(&mut out, false);
        }
        self.in_long = false;
        out
    }

    /// Bytes held waiting for the end of a line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn emit_chunk(&mut self, out: &mut Vec<Line>, n: usize) {
        let rest = self.buf.split_off(n);
        let bytes = std::mem::replace(&mut self.buf, rest);
        out.push(Line {
            bytes,
            continued: self.in_long,
        });
        self.in_long = true;
    }

    /// Emits full chunks while more than `max` bytes are buffered, keeping
    /// a final `\r` that may belong to a `\r\n` still to come.
    fn spill(&mut self, out: &mut Vec<Line>) {
        while self.buf.len() > self.max
            && !(self.buf.len() == self.max + 1 && self.buf[self.max] == b'\r')
        {
            self.emit_chunk(out, self.max);
        }
    }

    /// Emits the buffered line; `newline`: it ended with a `\n` (so a
    /// `\r` before it is part of the terminator).
    fn end_line(&mut self, out: &mut Vec<Line>, newline: bool) {
        if newline && self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        while self.buf.len() > self.max {
            self.emit_chunk(out, self.max);
        }
        if !self.buf.is_empty() || !self.in_long {
            let bytes = std::mem::take(&mut self.buf);
            out.push(Line {
                bytes,
                continued: self.in_long,
            });
        }
        self.in_long = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::test_util::{line, lines};

    #[test]
    fn framing_splits_lines_handles_crlf_and_flushes_the_tail() {
        let mut f = LineFramer::new(100);
        let got = f.feed(b"one\r\ntwo\nthr");
        assert_eq!(got, vec![line("one"), line("two")]);
        assert_eq!(f.pending(), 3);
        assert_eq!(f.feed(b"ee\r"), vec![]);
        assert_eq!(
            f.feed(b"\n\nmid\rline\n"),
            vec![line("three"), line(""), line("mid\rline")]
        );
        assert_eq!(f.feed(b"tail"), vec![]);
        assert_eq!(f.finish(), vec![line("tail")]);
        assert_eq!(f.finish(), vec![]);
    }

    #[test]
    fn framing_splits_over_long_lines_without_losing_bytes() {
        let mut f = LineFramer::new(4);
        // exactly max, max + 1, 2 * max, and max followed by \r\n split across feeds
        let mut got = f.feed(b"abcd\nabcde\nabcdefgh\nwxyz\r");
        got.extend(f.feed(b"\nend"));
        got.extend(f.finish());
        let want = [
            ("abcd", false),
            ("abcd", false),
            ("e", true),
            ("abcd", false),
            ("efgh", true),
            ("wxyz", false),
            ("end", false),
        ];
        let want: Vec<Line> = want
            .iter()
            .map(|(s, c)| Line {
                bytes: s.as_bytes().to_vec(),
                continued: *c,
            })
            .collect();
        assert_eq!(got, want);
    }

    /// Found by the property test in tests/framing.rs: a `\r` that ends
    /// the stream is not before a `\n`, so it is output, not a terminator.
    #[test]
    fn framing_keeps_a_carriage_return_at_the_end_of_the_stream() {
        let mut f = LineFramer::new(100);
        assert_eq!(f.feed(b"50%\r"), vec![]);
        assert_eq!(f.finish(), vec![line("50%\r")]);
        assert_eq!(lines(b"\r"), vec![line("\r")]);
        // held back by a full chunk, in case a \n follows: kept at EOF too
        let mut f = LineFramer::new(2);
        assert_eq!(f.feed(b"ab\r"), vec![]);
        let tail = f.finish();
        assert_eq!(tail.concat_bytes(), b"ab\r");
        assert_eq!(tail.len(), 2);
        assert!(tail[1].continued);
    }

    #[test]
    fn framing_a_one_megabyte_line_gives_48k_chunks_fed_in_pieces() {
        let big: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = big.clone();
        input.extend_from_slice(b"\nnext\n");
        let mut f = LineFramer::new(MAX_RECORD);
        let mut got = Vec::new();
        for piece in input.chunks(7000) {
            got.extend(f.feed(piece));
        }
        got.extend(f.finish());
        assert_eq!(got.len(), 1024 * 1024 / MAX_RECORD + 1 + 1);
        let (chunks, rest) = got.split_at(got.len() - 1);
        assert_eq!(rest, &[line("next")]);
        assert!(!chunks[0].continued && chunks[1..].iter().all(|c| c.continued));
        assert!(chunks.iter().all(|c| c.bytes.len() <= MAX_RECORD));
        assert_eq!(chunks.concat_bytes(), big);
    }

    trait ConcatBytes {
        fn concat_bytes(&self) -> Vec<u8>;
    }
    impl ConcatBytes for [Line] {
        fn concat_bytes(&self) -> Vec<u8> {
            self.iter().flat_map(|l| l.bytes.iter().copied()).collect()
        }
    }

    #[test]
    fn framing_keeps_binary_garbage() {
        let garbage: Vec<u8> = (0u8..=255).filter(|b| *b != b'\n').collect();
        let mut input = garbage.clone();
        input.extend_from_slice(b"\n\xff\xfe\x00\n");
        let got = lines(&input);
        assert_eq!(got.len(), 2);
        // only a \r right before the \n is a terminator; here \r (13) sits mid-line
        assert_eq!(got[0].bytes, garbage);
        assert_eq!(got[1].bytes, b"\xff\xfe\x00");
    }
}
