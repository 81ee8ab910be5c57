//! `--watch`: the redraw loop `status` and `fleet` share.

use std::io::Write;
use std::time::{Duration, SystemTime};

use super::args::{MAX_SECS, usage_error};
use super::exit::Failure;
use super::render;

/// `--watch SECS` as an interval; `None` when it is not a number (then it
/// is the first positional argument: `--watch text`).
pub(super) fn parse_watch(watch: &str) -> Option<Duration> {
    match watch.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= MAX_SECS => Some(Duration::from_secs_f64(v)),
        Ok(_) => usage_error("--watch SECS must be a positive number of seconds, at most 86400"),
        Err(_) => None,
    }
}

/// `--watch`: fetch every `every` until interrupted; redraw the screen
/// with `text`, or with `json` print one compact document per line.
pub(super) fn redraw<T: serde::Serialize>(
    every: Duration,
    json: bool,
    title: &str,
    mut fetch: impl FnMut() -> Result<T, Failure>,
    text: impl Fn(&T) -> String,
) -> ! {
    loop {
        let result = fetch();
        if json {
            match &result {
                Ok(s) => match serde_json::to_string(s) {
                    Ok(line) => println!("{line}"),
                    Err(e) => eprintln!("clearifyctl: cannot encode the answer: {e}"),
                },
                Err(f) => eprintln!(
                    "clearifyctl: {}",
                    render::escape(&f.message, render::Newlines::Keep)
                ),
            }
        } else {
            let body = match &result {
                Ok(s) => text(s),
                Err(f) => format!(
                    "clearifyctl: {}\n",
                    render::escape(&f.message, render::Newlines::Keep)
                ),
            };
            let now = humantime::format_rfc3339_seconds(SystemTime::now());
            print!(
                "\x1b[H\x1b[2JEvery {}: {title}    {now}\n\n{body}",
                humantime::format_duration(every)
            );
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}
