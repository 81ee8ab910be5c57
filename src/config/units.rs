//! Sizes (`"512M"`, `"1.5G"`, `"max"`) and durations (`"100ms"`, `"1m 30s"`).

use std::time::Duration;

/// Parse a size: an integer number of bytes, or a number with a binary unit
/// (`K`, `M`, `G`, `T`, optionally followed by `iB` or `B`; powers of 1024),
/// e.g. `"512M"`, `"1.5G"`, `"200MiB"`. `"max"` gives `None` (no limit).
pub fn parse_size(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("max") || t.eq_ignore_ascii_case("infinity") {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(format!(
            "invalid size `{s}`: expected a number with an optional unit, e.g. \"512M\" or \"1.5G\""
        ));
    }
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "invalid size `{s}`: unknown unit `{unit}` (use K, M, G or T, powers of 1024)"
            ));
        }
    };
    let multiplier = (1u64 << shift) as f64;
    let bytes = if let Ok(n) = num.parse::<u64>() {
        n.checked_mul(1u64 << shift)
    } else {
        match num.parse::<f64>() {
            Ok(f) if f.is_finite() && f * multiplier < u64::MAX as f64 => {
                Some((f * multiplier) as u64)
            }
            Ok(_) => None,
            Err(_) => {
                return Err(format!("invalid size `{s}`: `{num}` is not a number"));
            }
        }
    };
    bytes
        .map(Some)
        .ok_or_else(|| format!("invalid size `{s}`: too large"))
}

/// Parse a humantime duration (`"100ms"`, `"60s"`, `"1m 30s"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration `{s}`: {e} (write e.g. \"100ms\", \"60s\" or \"1m 30s\")")
    })
}
