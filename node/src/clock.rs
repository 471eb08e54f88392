//! The node's clock and randomness: the only places that read the system time or the OS
//! random source. Everything below the node takes them as parameters.

use gpumesh_protocol::Timestamp;
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as a protocol timestamp (Unix milliseconds).
pub fn now() -> Timestamp {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    Timestamp(ms)
}

/// `N` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], std::io::Error> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(format!("OS random source failed: {e}")))?;
    Ok(b)
}

/// RFC 3339 text (UTC, whole seconds) of a timestamp, for JSON and tables.
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_millis(t.0)).to_string()
}
