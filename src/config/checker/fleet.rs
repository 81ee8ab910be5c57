//! `[fleet]`: publish, interval, forget_after; `[metrics]`: textfile.

use super::super::keys::{FLEET_KEYS, METRICS_KEYS, section_key_names};
use super::super::schema::*;
use super::{Checker, Val, join};

impl Checker<'_> {
    pub(super) fn fleet(&mut self, v: Option<&Val<'_>>) -> Option<FleetConfig> {
        let mut fleet = FleetConfig::default();
        let mut ok = true;
        let mut forget_span = None;
        let mut interval_span = None;
        if let Some(v) = v
            && let Some(t) = self.table(v, "fleet")
        {
            for (k, val) in t.iter() {
                let name = k.get_ref().as_ref();
                let key = join("fleet", name);
                match name {
                    "publish" => match self.boolean(val, &key) {
                        Some(b) => fleet.publish = b,
                        None => ok = false,
                    },
                    "interval" => match self.plain_duration(val, &key) {
                        Some(d) if !(MIN_FLEET_INTERVAL..=MAX_FLEET_INTERVAL).contains(&d) => {
                            self.error(
                                &val.span(),
                                &key,
                                format!(
                                    "must be between {} and {}",
                                    humantime::format_duration(MIN_FLEET_INTERVAL),
                                    humantime::format_duration(MAX_FLEET_INTERVAL)
                                ),
                            );
                            ok = false;
                        }
                        Some(d) => {
                            fleet.interval = d;
                            interval_span = Some(val.span());
                        }
                        None => ok = false,
                    },
                    "forget_after" => match self.plain_duration(val, &key) {
                        Some(d) => {
                            fleet.forget_after = d;
                            forget_span = Some(val.span());
                        }
                        None => ok = false,
                    },
                    _ => self.unknown_key(&k.span(), "fleet", name, &section_key_names(FLEET_KEYS)),
                }
            }
        }
        // Redis EX takes whole seconds; a TTL shorter than "lost" would make
        // a lost device vanish instead.
        let whole = |d: std::time::Duration| d.as_secs() * 1000 == d.as_millis() as u64;
        if ok && !whole(fleet.interval) {
            self.error(
                &interval_span.unwrap_or(0..0),
                "fleet.interval",
                "must be a whole number of seconds",
            );
            ok = false;
        }
        if ok && fleet.forget_after < fleet.interval * 3 {
            self.error(
                &forget_span.unwrap_or(0..0),
                "fleet.forget_after",
                format!(
                    "must be at least 3 × interval ({}), or a device would vanish before it shows as lost",
                    humantime::format_duration(fleet.interval * 3)
                ),
            );
            ok = false;
        }
        ok.then_some(fleet)
    }

    pub(super) fn metrics(&mut self, v: Option<&Val<'_>>) -> Option<MetricsConfig> {
        let mut metrics = MetricsConfig::default();
        let mut ok = true;
        if let Some(v) = v
            && let Some(t) = self.table(v, "metrics")
        {
            for (k, val) in t.iter() {
                let name = k.get_ref().as_ref();
                let key = join("metrics", name);
                match name {
                    "textfile" => match self.nonempty_string(val, &key) {
                        Some(s) if !s.ends_with(".prom") => {
                            self.error(
                                &val.span(),
                                &key,
                                "must end in `.prom`: node_exporter's textfile collector reads only *.prom files",
                            );
                            ok = false;
                        }
                        Some(s) => metrics.textfile = Some(self.resolve_path(&s)),
                        None => ok = false,
                    },
                    _ => self.unknown_key(
                        &k.span(),
                        "metrics",
                        name,
                        &section_key_names(METRICS_KEYS),
                    ),
                }
            }
        }
        ok.then_some(metrics)
    }
}
