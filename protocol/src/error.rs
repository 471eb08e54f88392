//! [`Invalid`]: every reason a message from the network is refused, one variant per cause.

use crate::envelope::Kind;
use crate::time::Timestamp;

/// Why a message from a peer was refused. One variant per distinct cause so tests and metrics
/// can tell them apart; [`Invalid::code`] gives a stable snake_case label for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    // --- envelope ---
    #[error("message is {len} bytes, more than the {max} allowed")]
    Oversized { len: usize, max: usize },
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(&'static str),
    #[error("unknown message kind {0}")]
    UnknownKind(u64),
    #[error("expected a {expected} message, got a {got}")]
    WrongKind { expected: Kind, got: Kind },
    #[error("signer key is not a valid ed25519 public key")]
    BadSignerKey,
    #[error("bad signature")]
    BadSignature,
    #[error("malformed body: {0}")]
    MalformedBody(String),
    #[error("signed by a key other than the one the message names")]
    SignerMismatch,
    // --- common fields ---
    #[error("wrong network: expected `{expected}`, got `{got}`")]
    WrongNetwork { expected: String, got: String },
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u32),
    #[error("expired at {expires_at} (now {now})")]
    Expired { expires_at: Timestamp, now: Timestamp },
    #[error("issued at {issued_at}, too far in the future (now {now})")]
    IssuedInFuture { issued_at: Timestamp, now: Timestamp },
    #[error("issued at {issued_at}, too long ago (now {now})")]
    IssuedTooLongAgo { issued_at: Timestamp, now: Timestamp },
    #[error("sequence {seq} is not newer than {latest}")]
    StaleSequence { seq: u64, latest: u64 },
    #[error("already known")]
    Duplicate,
    // --- offer fields ---
    #[error("offer id does not match the provider and GPU group")]
    OfferIdMismatch,
    #[error("offer has zero GPUs")]
    ZeroGpus,
    #[error("offer says {free} GPUs are free of {total}")]
    FreeExceedsTotal { free: u32, total: u32 },
    #[error("offer has zero VRAM")]
    ZeroVram,
    #[error("offer has a zero price")]
    ZeroPrice,
    #[error("minimum lease duration {min_s}s is longer than the maximum {max_s}s")]
    MinDurationExceedsMax { min_s: u64, max_s: u64 },
    #[error("maximum lease duration is zero")]
    ZeroDuration,
    #[error("expires at {expires_at}, more than the allowed TTL after it was issued at {issued_at}")]
    ExpiryTooFarAhead { issued_at: Timestamp, expires_at: Timestamp },
    #[error("expires at {expires_at}, before it was issued at {issued_at}")]
    ExpiresBeforeIssued { issued_at: Timestamp, expires_at: Timestamp },
    #[error("field `{0}` is too long or has too many items")]
    FieldTooLong(&'static str),
    #[error("field `{0}` has an invalid value")]
    InvalidField(&'static str),
    // --- book ---
    #[error("withdrawal names an offer of another provider")]
    NotOwner,
    #[error("provider already has the maximum number of offers")]
    ProviderCapReached,
}

impl Invalid {
    /// A stable snake_case label for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::Oversized { .. } => "oversized",
            Invalid::MalformedEnvelope(_) => "malformed_envelope",
            Invalid::UnknownKind(_) => "unknown_kind",
            Invalid::WrongKind { .. } => "wrong_kind",
            Invalid::BadSignerKey => "bad_signer_key",
            Invalid::BadSignature => "bad_signature",
            Invalid::MalformedBody(_) => "malformed_body",
            Invalid::SignerMismatch => "signer_mismatch",
            Invalid::WrongNetwork { .. } => "wrong_network",
            Invalid::UnsupportedVersion(_) => "unsupported_version",
            Invalid::Expired { .. } => "expired",
            Invalid::IssuedInFuture { .. } => "issued_in_future",
            Invalid::IssuedTooLongAgo { .. } => "issued_too_long_ago",
            Invalid::StaleSequence { .. } => "stale_sequence",
            Invalid::Duplicate => "duplicate",
            Invalid::OfferIdMismatch => "offer_id_mismatch",
            Invalid::ZeroGpus => "zero_gpus",
            Invalid::FreeExceedsTotal { .. } => "free_exceeds_total",
            Invalid::ZeroVram => "zero_vram",
            Invalid::ZeroPrice => "zero_price",
            Invalid::MinDurationExceedsMax { .. } => "min_duration_exceeds_max",
            Invalid::ZeroDuration => "zero_duration",
            Invalid::ExpiryTooFarAhead { .. } => "expiry_too_far_ahead",
            Invalid::ExpiresBeforeIssued { .. } => "expires_before_issued",
            Invalid::FieldTooLong(_) => "field_too_long",
            Invalid::InvalidField(_) => "invalid_field",
            Invalid::NotOwner => "not_owner",
            Invalid::ProviderCapReached => "provider_cap_reached",
        }
    }

    /// Whether the verdict depends on the receiving node (its clock, its `max_offer_ttl`, the
    /// offers its book holds) rather than on the message alone. An honest relay, whose clock,
    /// settings or book differ, may have judged the same message valid: only the message's
    /// own signer is to blame for one of these (see `docs/protocol.md` §6).
    pub fn depends_on_receiver(&self) -> bool {
        matches!(
            self,
            Invalid::IssuedInFuture { .. }
                | Invalid::IssuedTooLongAgo { .. }
                | Invalid::ExpiryTooFarAhead { .. }
                | Invalid::NotOwner
        )
    }

    /// Whether the sender is at fault. `false` for messages that are merely late, repeated
    /// or over a local cap: a node ignores those without penalising anyone, because honest
    /// peers forward them too (gossip races, an offer that expired in flight).
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            Invalid::StaleSequence { .. }
                | Invalid::Duplicate
                | Invalid::Expired { .. }
                | Invalid::ProviderCapReached
        )
    }
}
