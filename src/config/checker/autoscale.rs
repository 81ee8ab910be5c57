//! `autoscale = { min, max, backlog_per_instance, scale_down_after,
//! memory_headroom }` of a group: each field read and bounded with the
//! span of its own value, an unknown field with "did you mean".

use std::time::Duration;

use super::super::schema::{MAX_BACKLOG_PER_INSTANCE, MAX_INSTANCES, MIN_SCALE_DOWN_AFTER};
use super::{Checker, join};
use crate::model::autoscale::Autoscale;

/// The fields of `autoscale`, in the order workers.toml(5) lists them.
pub(super) const FIELDS: &[&str] = &[
    "min",
    "max",
    "backlog_per_instance",
    "scale_down_after",
    "memory_headroom",
];

/// `backlog_per_instance` when not written.
pub const DEFAULT_BACKLOG_PER_INSTANCE: u32 = 20;
/// `scale_down_after` when not written.
pub const DEFAULT_SCALE_DOWN_AFTER: Duration = Duration::from_secs(120);
/// `memory_headroom` when not written: 300 MiB.
pub const DEFAULT_MEMORY_HEADROOM: u64 = 300 << 20;

impl Checker<'_> {
    /// Read an `autoscale` table, or report every field that is wrong.
    pub(super) fn autoscale(&mut self, v: &super::Val<'_>, key: &str) -> Option<Autoscale> {
        let t = self.table(v, key)?;
        let mut a = Autoscale {
            min: 0,
            max: 0,
            backlog_per_instance: DEFAULT_BACKLOG_PER_INSTANCE,
            scale_down_after: DEFAULT_SCALE_DOWN_AFTER,
            memory_headroom: DEFAULT_MEMORY_HEADROOM,
        };
        let (mut min, mut max, mut good) = (None, None, true);
        let mut written: Vec<&str> = Vec::new();
        for (k, fv) in t.iter() {
            let name = k.get_ref().as_ref();
            written.push(name);
            let fkey = join(key, name);
            let ok = match name {
                "min" => self
                    .u32_in(fv, &fkey, 0, MAX_INSTANCES)
                    .map(|n| min = Some((n, fv.span()))),
                "max" => self
                    .u32_in(fv, &fkey, 1, MAX_INSTANCES)
                    .map(|n| max = Some((n, fv.span()))),
                "backlog_per_instance" => self
                    .u32_in(fv, &fkey, 1, MAX_BACKLOG_PER_INSTANCE)
                    .map(|n| a.backlog_per_instance = n),
                "scale_down_after" => match self.plain_duration(fv, &fkey) {
                    Some(d) if d < MIN_SCALE_DOWN_AFTER => {
                        self.error(
                            &fv.span(),
                            &fkey,
                            "must be at least 1s (one step down per this long)",
                        );
                        None
                    }
                    Some(d) => {
                        a.scale_down_after = d;
                        Some(())
                    }
                    None => None,
                },
                "memory_headroom" => match self.size(fv, &fkey, true) {
                    Some(Some(n)) => {
                        a.memory_headroom = n;
                        Some(())
                    }
                    Some(None) => {
                        self.error(
                            &fv.span(),
                            &fkey,
                            "must be a size such as \"300M\" (\"max\" would refuse every scale-up)",
                        );
                        None
                    }
                    None => None,
                },
                _ => {
                    self.unknown_key(&k.span(), key, name, FIELDS);
                    None
                }
            };
            good &= ok.is_some();
        }
        for (field, got) in [("min", &min), ("max", &max)] {
            if got.is_none() && !written.contains(&field) {
                self.error(
                    &v.span(),
                    key,
                    format!("missing `{field}` (autoscale needs both min and max)"),
                );
                good = false;
            }
        }
        let (Some((lo, _)), Some((hi, hi_span))) = (min, max) else {
            return None;
        };
        if lo > hi {
            self.error(
                &hi_span,
                &join(key, "max"),
                format!("max ({hi}) is below min ({lo})"),
            );
            return None;
        }
        a.min = lo;
        a.max = hi;
        good.then_some(a)
    }
}
