//! Helpers shared by the unit tests of the log modules.

use super::framer::{Line, LineFramer, MAX_RECORD};
use super::sink::WorkerMeta;

pub(crate) fn lines(data: &[u8]) -> Vec<Line> {
    let mut f = LineFramer::new(MAX_RECORD);
    let mut out = f.feed(data);
    out.extend(f.finish());
    out
}

pub(crate) fn line(s: &str) -> Line {
    Line {
        bytes: s.as_bytes().to_vec(),
        continued: false,
    }
}

pub(crate) fn meta(group: &str, instance: &str) -> WorkerMeta {
    WorkerMeta {
        group: group.into(),
        instance: instance.into(),
        node: format!("{instance}@dev"),
        pid: 1,
    }
}
