//! A decoder for offers in exactly the CBOR form this crate writes them in, beside serde's.
//!
//! Decoding an offer with serde over ciborium is about a tenth of ingesting it (generic
//! field matching, a header object per item, a zeroed 4 KiB scratch buffer per call). Every
//! node, including this one, encodes an offer the same way: a definite map of its fields in
//! declaration order, text keys, integers in their shortest form, byte strings for ids, `null`
//! for an absent option. [`decode`] reads only that form and returns `None` for anything
//! else (another key order, a tag, an indefinite length, a longer integer encoding, trailing
//! bytes…), and the caller then decodes with serde, which decides. So the set of offers
//! accepted, and what each decodes to, stay exactly serde's: for every input this accepts,
//! serde decodes the same value (`protocol/tests/roundtrip.rs` checks that on random offers
//! and on every single-byte change of encoded ones).

use crate::id::{NodeId, OfferId};
use crate::offer::Offer;
use crate::price::Price;
use crate::spec::{ComputeCapability, GpuSpec, HostSpec, Interconnect};
use crate::time::Timestamp;

/// The offer in `bytes` if they are in the canonical form, else `None` (decode with serde).
pub fn decode(bytes: &[u8]) -> Option<Offer> {
    let mut c = Cursor(bytes);
    c.map(15)?;
    c.key("v")?;
    let v = c.u32()?;
    c.key("network")?;
    let network = c.string()?;
    c.key("offer_id")?;
    let offer_id = OfferId::from_bytes(c.bytes()?);
    c.key("provider")?;
    let provider = NodeId::from_bytes(c.bytes()?);
    c.key("seq")?;
    let seq = c.uint()?;
    c.key("issued_at")?;
    let issued_at = Timestamp(c.uint()?);
    c.key("expires_at")?;
    let expires_at = Timestamp(c.uint()?);
    c.key("gpu")?;
    let gpu = gpu_spec(&mut c)?;
    c.key("gpu_total")?;
    let gpu_total = c.u32()?;
    c.key("gpu_free")?;
    let gpu_free = c.u32()?;
    c.key("host")?;
    let host = host_spec(&mut c)?;
    c.key("price")?;
    let price = Price(c.uint()?);
    c.key("min_duration_s")?;
    let min_duration_s = c.uint()?;
    c.key("max_duration_s")?;
    let max_duration_s = c.uint()?;
    c.key("addrs")?;
    let n = c.array()?;
    let mut addrs = Vec::with_capacity(n.min(16) as usize);
    for _ in 0..n {
        addrs.push(c.string()?);
    }
    let offer = Offer {
        v,
        network,
        offer_id,
        provider,
        seq,
        issued_at,
        expires_at,
        gpu,
        gpu_total,
        gpu_free,
        host,
        price,
        min_duration_s,
        max_duration_s,
        addrs,
    };
    c.0.is_empty().then_some(offer)
}

/// The offer id of an offer body in the canonical form, read from its first fields without
/// decoding the rest; `None` for any other form. Says nothing about whether the rest decodes.
pub fn peek_offer_id(bytes: &[u8]) -> Option<OfferId> {
    let mut c = Cursor(bytes);
    c.map(15)?;
    c.key("v")?;
    c.u32()?;
    c.key("network")?;
    c.text()?;
    c.key("offer_id")?;
    Some(OfferId::from_bytes(c.bytes()?))
}

fn gpu_spec(c: &mut Cursor<'_>) -> Option<GpuSpec> {
    c.map(7)?;
    c.key("vendor")?;
    let vendor = c.string()?;
    c.key("model")?;
    let model = c.string()?;
    c.key("vram_mib")?;
    let vram_mib = c.u32()?;
    c.key("compute_capability")?;
    let compute_capability = if c.null() {
        None
    } else {
        (c.array()? == 2).then_some(())?;
        Some(ComputeCapability(c.u8()?, c.u8()?))
    };
    c.key("interconnect")?;
    let interconnect = match c.text()? {
        "pcie" => Interconnect::Pcie,
        "sxm" => Interconnect::Sxm,
        "nvlink" => Interconnect::Nvlink,
        _ => return None,
    };
    c.key("cuda_version")?;
    let cuda_version = c.option_string()?;
    c.key("driver_version")?;
    let driver_version = c.option_string()?;
    Some(GpuSpec { vendor, model, vram_mib, compute_capability, interconnect, cuda_version, driver_version })
}

fn host_spec(c: &mut Cursor<'_>) -> Option<HostSpec> {
    c.map(4)?;
    c.key("cpu_cores")?;
    let cpu_cores = c.u32()?;
    c.key("ram_mib")?;
    let ram_mib = c.uint()?;
    c.key("disk_gib")?;
    let disk_gib = c.uint()?;
    c.key("region")?;
    let region = c.string()?;
    Some(HostSpec { cpu_cores, ram_mib, disk_gib, region })
}

/// The bytes not read yet.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    /// A data item's head: major type and argument, the argument in its shortest form.
    fn head(&mut self) -> Option<(u8, u64)> {
        let (&first, rest) = self.0.split_first()?;
        let (major, info) = (first >> 5, first & 0x1f);
        let (arg, len) = match info {
            0..=23 => (u64::from(info), 0),
            24 => (u64::from(*rest.first()?), 1),
            25 => (u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)), 2),
            26 => (u64::from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)), 4),
            27 => (u64::from_be_bytes(rest.get(..8)?.try_into().ok()?), 8),
            _ => return None,
        };
        let shortest = match len {
            0 => true,
            1 => arg >= 24,
            2 => arg > 0xff,
            4 => arg > 0xffff,
            _ => arg > 0xffff_ffff,
        };
        if !shortest {
            return None;
        }
        self.0 = &rest[len..];
        Some((major, arg))
    }

    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        if n > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn uint(&mut self) -> Option<u64> {
        match self.head()? {
            (0, v) => Some(v),
            _ => None,
        }
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.uint()?).ok()
    }

    fn u8(&mut self) -> Option<u8> {
        u8::try_from(self.uint()?).ok()
    }

    fn text(&mut self) -> Option<&'a str> {
        match self.head()? {
            (3, n) => std::str::from_utf8(self.take(n)?).ok(),
            _ => None,
        }
    }

    fn string(&mut self) -> Option<String> {
        self.text().map(str::to_owned)
    }

    /// `null` (absent) or a text string.
    fn option_string(&mut self) -> Option<Option<String>> {
        if self.null() { Some(None) } else { self.string().map(Some) }
    }

    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        match self.head()? {
            (2, n) if n == N as u64 => self.take(n)?.try_into().ok(),
            _ => None,
        }
    }

    fn key(&mut self, key: &str) -> Option<()> {
        (self.text()? == key).then_some(())
    }

    /// A definite map of exactly `n` pairs.
    fn map(&mut self, n: u64) -> Option<()> {
        (self.head()? == (5, n)).then_some(())
    }

    /// A definite array's length.
    fn array(&mut self) -> Option<u64> {
        match self.head()? {
            (4, n) => Some(n),
            _ => None,
        }
    }

    /// Reads a `null` if one is next.
    fn null(&mut self) -> bool {
        match self.0.split_first() {
            Some((0xf6, rest)) => {
                self.0 = rest;
                true
            }
            _ => false,
        }
    }
}
