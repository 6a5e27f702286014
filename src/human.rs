//! Sizes and durations as ampire writes them for people (and seconds for JSON).

use std::time::Duration;

/// `n` bytes, in the largest binary unit under which it is at least 1: `512 B`, `11.8 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{n} B"),
        _ => format!("{v:.1} {}", units[u]),
    }
}

/// A duration as MPIRE formats it: `H:MM:SS`, with milliseconds when there are any.
pub(crate) fn hms(d: Duration) -> String {
    let secs = d.as_secs();
    let ms = d.subsec_millis();
    let base = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    match d.subsec_nanos() {
        0 => base,
        _ => format!("{base}.{ms:03}"),
    }
}

/// Serialises a duration as seconds, a float (the dashboard's JSON).
pub(crate) fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// [`seconds`], or null.
pub(crate) fn maybe_seconds<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12_670_000_000), "11.8 GiB");
        assert_eq!(hms(Duration::from_secs(3725)), "1:02:05");
        assert_eq!(hms(Duration::from_millis(61_050)), "0:01:01.050");
    }
}
