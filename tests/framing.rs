//! Properties of the worker-output framing (issue 12 §4): the line framer
//! never loses or reorders bytes however the stream is cut into reads, and
//! the grouper never loses or reorders lines.
//!
//! The model: a stream is split on `\n`; a `\r` right before a `\n` is
//! removed; every other byte is kept, in order; a line longer than the
//! framer's maximum is cut into chunks of that size, the second and later
//! ones marked `continued` (that is the only "truncation" the framer does,
//! and it is marked). The fuzz target `framer` (fuzz/) checks the same.

use std::time::{Duration, Instant};

use clearify_workerd::logs::{Grouper, MAX_HOLD, MAX_RECORD, QUIET};
use proptest::prelude::*;

#[path = "support/framing_model.rs"]
mod framing_model;
use framing_model::{expected_lines as model, frame_in_pieces as frame};

/// The bytes a stream of worker output is made of: real log lines,
/// tracebacks, warnings, line ends of all kinds, and arbitrary bytes.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(b"\n".to_vec()),
        2 => Just(b"\r\n".to_vec()),
        2 => Just(b"\r".to_vec()),
        1 => Just(b"[2024-05-01 12:00:00,123: ERROR/ForkPoolWorker-1] Task x raised".to_vec()),
        1 => Just(b"[2024-05-01 12:00:00,124: INFO/MainProcess] ready".to_vec()),
        1 => Just(b"Traceback (most recent call last):".to_vec()),
        1 => Just(b"  File \"/app/tasks.py\", line 3, in fail".to_vec()),
        1 => Just(b"ValueError: boom".to_vec()),
        1 => Just(b"/app/x.py:3: UserWarning: careful".to_vec()),
        1 => Just(b"During handling of the above exception, another exception occurred:".to_vec()),
        4 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(piece(), 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any byte stream, cut at any points, frames to exactly the model:
    /// no byte lost, none added, none reordered.
    #[test]
    fn framing_never_loses_or_reorders_bytes(
        stream in stream(),
        max in 1usize..80,
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        prop_assert_eq!(frame(&stream, max, &cuts), model(&stream, max));
    }

    /// Feeding byte by byte gives what feeding the whole stream at once gives.
    #[test]
    fn framing_does_not_depend_on_read_sizes(stream in stream(), max in 1usize..80) {
        let every: Vec<usize> = (0..=stream.len()).collect();
        prop_assert_eq!(frame(&stream, max, &every), frame(&stream, max, &[]));
    }

    /// The grouper keeps every non-empty line, in order, whatever the
    /// clock does, and no record exceeds the cap.
    #[test]
    fn grouping_never_loses_or_reorders_lines(
        stream in stream(),
        max in prop_oneof![1usize..200, Just(MAX_RECORD)],
        gaps in proptest::collection::vec(0u64..300, 0..64),
    ) {
        let lines = frame(&stream, max, &[]);
        let mut g = Grouper::new(max, QUIET, MAX_HOLD);
        let mut now = Instant::now();
        let mut records = Vec::new();
        for (i, line) in lines.iter().cloned().enumerate() {
            now += Duration::from_millis(gaps.get(i).copied().unwrap_or(0));
            if let Some(d) = g.deadline() && d <= now {
                records.extend(g.poll(now));
            }
            records.extend(g.push(line, now));
        }
        records.extend(g.flush());
        let got: Vec<&[u8]> = records
            .iter()
            .flat_map(|r| r.message.split(|&b| b == b'\n'))
            .filter(|l| !l.is_empty())
            .collect();
        let want: Vec<&[u8]> = lines
            .iter()
            .map(|l| l.bytes.as_slice())
            .filter(|l| !l.is_empty())
            .collect();
        prop_assert_eq!(got, want);
        for r in &records {
            prop_assert!(r.message.len() <= max);
            prop_assert!(r.priority <= 7);
        }
    }
}
