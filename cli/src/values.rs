//! Parsers of the command-line values the fleet commands share: percentages, durations,
//! rates.

use crate::error::CliError;

/// `5%`, `5`, `0.5%` → 5.0, 5.0, 0.5.
pub(crate) fn parse_percent(text: &str, what: &str) -> Result<f64, CliError> {
    let t = text.trim();
    let n = t.strip_suffix('%').unwrap_or(t).trim();
    n.parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
        .ok_or_else(|| CliError::Usage(format!("{what} {text:?} is not a percentage (0-100%)")))
}

/// `10m`, `1h 30m`, `0` → seconds.
pub(crate) fn parse_duration(text: &str, what: &str) -> Result<u64, CliError> {
    let t = text.trim();
    if t == "0" {
        return Ok(0);
    }
    humantime::parse_duration(t)
        .map(|d| d.as_secs())
        .map_err(|e| CliError::Usage(format!("{what} {text:?}: {e} (e.g. 10m, 1h, 0)")))
}

/// `200/min`, `5/s`, `1000/h`, `200` (per minute) → per minute.
pub(crate) fn parse_rate(text: &str) -> Result<u32, CliError> {
    let t = text.trim();
    let (n, unit) = t.split_once('/').unwrap_or((t, "min"));
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| CliError::Usage(format!("--rate {text:?}: expected N/min, N/s or N/h")))?;
    let per_minute = match unit.trim() {
        "min" | "m" | "minute" => n,
        "s" | "sec" | "second" => n.saturating_mul(60),
        "h" | "hour" => n.div_ceil(60),
        other => {
            return Err(CliError::Usage(format!(
                "--rate {text:?}: unknown unit {other:?} (min, s or h)"
            )));
        }
    };
    u32::try_from(per_minute)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| CliError::Usage(format!("--rate {text:?} must be at least 1/min")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_values_parse() {
        assert_eq!(parse_percent("5%", "x").unwrap(), 5.0);
        assert_eq!(parse_percent("0.5", "x").unwrap(), 0.5);
        assert!(parse_percent("101%", "x").is_err());
        assert!(parse_percent("five", "x").is_err());
        assert_eq!(parse_duration("10m", "x").unwrap(), 600);
        assert_eq!(parse_duration("0", "x").unwrap(), 0);
        assert!(parse_duration("soon", "x").is_err());
        assert_eq!(parse_rate("200/min").unwrap(), 200);
        assert_eq!(parse_rate("5/s").unwrap(), 300);
        assert_eq!(parse_rate("90/h").unwrap(), 2);
        assert_eq!(parse_rate("1000").unwrap(), 1000);
        assert!(parse_rate("0/min").is_err());
        assert!(parse_rate("3/fortnight").is_err());
    }
}
