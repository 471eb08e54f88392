//! [`Price`]: integer micro-USD per GPU-hour, with exact decimal parsing and printing.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Micro-USD in one USD.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// A price in micro-USD per GPU-hour (`2_350_000` is $2.35). Never a float: parsing and
/// printing are exact decimal. On the wire: an unsigned CBOR integer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Price(pub u64);

/// Why a price string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PriceError {
    #[error("`{0}` is not a price: write USD per GPU-hour as a decimal number, e.g. 2.35")]
    NotANumber(String),
    #[error("`{0}` has more than 6 decimal places: prices are exact to the micro-dollar")]
    TooPrecise(String),
    #[error("`{0}` is too large for a price")]
    TooLarge(String),
}

impl Price {
    /// The price in micro-USD.
    pub fn micros(self) -> u64 {
        self.0
    }

    /// Builds a price from whole micro-USD.
    pub fn from_micros(micros: u64) -> Price {
        Price(micros)
    }

    /// The cost of `gpus` GPUs for `millis` milliseconds at this price, in micro-USD, rounded
    /// down. Computed in 128-bit integers, saturating at `u64::MAX` beyond that.
    pub fn cost(self, gpus: u32, millis: u64) -> u64 {
        let v = (self.0 as u128 * gpus as u128).checked_mul(millis as u128).map(|v| v / 3_600_000);
        v.and_then(|v| u64::try_from(v).ok()).unwrap_or(u64::MAX)
    }

    /// The price as USD in a JSON-friendly float. Only for display and JSON output; the wire
    /// and every comparison use the integer.
    pub fn as_usd_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_USD as f64
    }
}

/// Parses a non-negative decimal with at most `scale` fractional digits (an optional leading
/// `$` is allowed) into an integer scaled by `10^scale`.
pub(crate) fn parse_fixed(s: &str, scale: u32) -> Result<u128, FixedError> {
    let s = s.strip_prefix('$').unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(FixedError::NotANumber);
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale as usize {
        return Err(FixedError::TooPrecise);
    }
    let mut v: u128 = 0;
    for b in int.bytes() {
        v = v.checked_mul(10).and_then(|v| v.checked_add((b - b'0') as u128)).ok_or(FixedError::TooLarge)?;
    }
    let mut f: u128 = 0;
    for i in 0..scale as usize {
        let d = frac_trimmed.as_bytes().get(i).map_or(0, |b| (b - b'0') as u128);
        f = f * 10 + d;
    }
    v.checked_mul(10u128.pow(scale)).and_then(|v| v.checked_add(f)).ok_or(FixedError::TooLarge)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FixedError {
    NotANumber,
    TooPrecise,
    TooLarge,
}

/// Prints an integer scaled by `10^scale` as a decimal with trailing zeros trimmed, keeping at
/// least `min_frac` fractional digits.
pub(crate) fn format_fixed(v: u128, scale: u32, min_frac: usize) -> String {
    let div = 10u128.pow(scale);
    let int = v / div;
    let frac = v % div;
    let mut frac_s = format!("{:0width$}", frac, width = scale as usize);
    while frac_s.len() > min_frac && frac_s.ends_with('0') {
        frac_s.pop();
    }
    if frac_s.is_empty() { int.to_string() } else { format!("{int}.{frac_s}") }
}

impl FromStr for Price {
    type Err = PriceError;
    fn from_str(s: &str) -> Result<Price, PriceError> {
        let t = s.trim();
        match parse_fixed(t, 6) {
            Ok(v) => u64::try_from(v).map(Price).map_err(|_| PriceError::TooLarge(s.to_string())),
            Err(FixedError::NotANumber) => Err(PriceError::NotANumber(s.to_string())),
            Err(FixedError::TooPrecise) => Err(PriceError::TooPrecise(s.to_string())),
            Err(FixedError::TooLarge) => Err(PriceError::TooLarge(s.to_string())),
        }
    }
}

impl fmt::Display for Price {
    /// Prints USD with at least two decimals: `2.35`, `0.5` → `0.50`, `1.234567`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_fixed(self.0 as u128, 6, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!("2.35".parse::<Price>().unwrap(), Price(2_350_000));
        assert_eq!("0.000001".parse::<Price>().unwrap(), Price(1));
        assert_eq!("3".parse::<Price>().unwrap(), Price(3_000_000));
        assert_eq!(".5".parse::<Price>().unwrap(), Price(500_000));
        assert_eq!("$1.10".parse::<Price>().unwrap(), Price(1_100_000));
        assert_eq!("1.2300000".parse::<Price>().unwrap(), Price(1_230_000));
    }

    #[test]
    fn rejects_what_is_not_a_price() {
        for bad in ["", ".", "-1", "1e3", "abc", "1.2.3", " ", "1,5"] {
            assert!(matches!(bad.parse::<Price>(), Err(PriceError::NotANumber(_))), "{bad:?}");
        }
        assert!(matches!("0.0000001".parse::<Price>(), Err(PriceError::TooPrecise(_))));
        assert!(matches!("99999999999999999999".parse::<Price>(), Err(PriceError::TooLarge(_))));
    }

    #[test]
    fn prints_with_two_decimals_at_least() {
        assert_eq!(Price(2_350_000).to_string(), "2.35");
        assert_eq!(Price(500_000).to_string(), "0.50");
        assert_eq!(Price(1).to_string(), "0.000001");
        assert_eq!(Price(3_000_000).to_string(), "3.00");
    }

    #[test]
    fn cost_is_exact_integer_arithmetic() {
        // 2 GPUs at $2.35 for 90 minutes = $7.05.
        assert_eq!(Price(2_350_000).cost(2, 90 * 60_000), 7_050_000);
        assert_eq!(Price(u64::MAX).cost(u32::MAX, u64::MAX), u64::MAX);
    }

    proptest! {
        #[test]
        fn print_then_parse_is_identity(micros in any::<u64>()) {
            let p = Price(micros);
            prop_assert_eq!(p.to_string().parse::<Price>().unwrap(), p);
        }
    }
}
