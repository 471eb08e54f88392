//! The query language: how a renter says which offers it wants, e.g.
//! `gpu=h100 vram>=80 count>=8 price<=2.5 region=us latency<50`. Modelled on Vast.ai's
//! `search offers`.
//!
//! # Syntax
//!
//! A query is a sequence of terms separated by whitespace; an offer matches when **every**
//! term holds (logical AND). The empty query (or one of only whitespace) matches every offer.
//!
//! ```text
//! query  = ws* [ term ( ws+ term )* ] ws*
//! term   = field ws* op ws* value
//! field  = ( letter | "_" ) ( letter | digit | "_" )*  ASCII, case-insensitive; see the fields
//! op     = "=" | "==" | "!=" | "<" | "<=" | ">" | ">=" | "~" | "in" | "notin"
//! value  = bare | quoted | list                         (ws+ or the end must follow)
//! bare   = one or more characters that are not whitespace nor = < > ! ~ [ ] , " '
//! quoted = '"' chars '"' | "'" chars "'"                escapes: \" \' \\ (no others)
//! list   = "[" ws* item ( ws* "," ws* item )* ws* "]"   item = bare | quoted
//! ```
//!
//! - Whitespace may surround an operator: `price <= 2.5` is the term `price<=2.5`. The word
//!   operators `in` and `notin` are matched case-insensitively and need whitespace (or a
//!   quote or `[`) after them: `gpu in [h100, a100]`.
//! - `in` and `notin` take a list. For shells, where `[…]` is a glob, a bare comma-separated
//!   value is a list too (`gpu in h100,a100`), and a single bare or quoted value is a list of
//!   one. Every other operator takes one value; a list or a bare value with a comma there is
//!   an error (write `in` instead).
//! - A value that contains whitespace or any of `= < > ! ~ [ ] , " '` must be quoted (the
//!   commas of a bare list after `in` aside). A backslash in a bare value is just a backslash.
//!   A "value" that looks like the next term (`gpu= vram>=80`) is reported as a missing value.
//! - Lists must not be empty and must not contain empty items (`[a,,b]`, `[a,]`).
//! - Numbers are plain non-negative decimals: `80`, `2.5`, `.5`, `2.` (no sign, no exponent,
//!   at most 6 decimal places). Whole-number fields reject a fractional part (`80.0` is 80).
//!   A price may start with `$`.
//!
//! # Fields
//!
//! | field | aliases | what it compares | operators |
//! |---|---|---|---|
//! | `gpu` | `model` | the GPU model name (see below) | `= != ~ in notin` |
//! | `vram` | `vram_gib` | GiB per GPU, whole number, against the VRAM rounded to the nearest GiB (81559 MiB counts as 80) | numeric |
//! | `count` | `gpus`, `num_gpus` | free GPUs in the offer (`gpu_free`), whole number | numeric |
//! | `price` | | USD per GPU-hour, exact to the micro-dollar | numeric |
//! | `region` | | the host region, case-insensitive and hierarchical (see below) | `= != ~ in notin` |
//! | `cc` | | CUDA compute capability `MAJOR.MINOR` (`9` means `9.0`), compared as (major, minor) | numeric |
//! | `interconnect` | | `pcie`, `sxm` or `nvlink` (checked when parsing) | `= != in notin` |
//! | `provider` | | the provider's node id (`12D3KooW…`) or a prefix of it, case-sensitive | `= != in notin` |
//! | `latency` | | measured round trip to the provider, milliseconds (decimals allowed) | numeric |
//! | `cpu` | `cores` | host CPU cores, whole number | numeric |
//! | `ram` | | host RAM, GiB (decimals allowed; compared exactly as GiB × 1024 against MiB) | numeric |
//! | `disk` | | host disk, GiB, whole number | numeric |
//! | `duration` | | the longest lease the provider accepts, hours (decimals allowed; compared exactly as hours × 3600 against seconds) | numeric |
//!
//! "numeric" means `= != < <= > >= in notin`. `~` is only for `gpu` and `region`.
//!
//! # Semantics
//!
//! - **`gpu`**: the model name is lowercased and split into *tokens*, the maximal runs of
//!   ASCII letters and digits (anything else separates; letters and digits are *not* split
//!   apart). The value is *normalised* to its lowercase ASCII letters and digits. `gpu=X`
//!   holds when the normalised X equals the concatenation of a contiguous run of tokens: for
//!   `H100-SXM-80GB` (tokens `h100 sxm 80gb`) `h100`, `H100SXM` and `h100-sxm` match but `h10`
//!   does not; for `RTX-4090`, `rtx4090`, `"RTX 4090"` and `4090` match. `gpu~X` holds when
//!   the normalised X is a substring of the concatenated tokens (`gpu~h10` matches `H100`).
//!   A value must contain at least one ASCII letter or digit.
//! - **`region`**: `region=X` holds when the region equals X or starts with `X-`, ignoring
//!   ASCII case (`region=us` matches `us`, `US` and `us-east`, not `usa`); `~` is a
//!   case-insensitive substring. Values are letters, digits and `-`.
//! - **`provider`**: `provider=X` holds when the provider's node id text starts with X
//!   (a full id is its own prefix). Values must be base58.
//! - **`latency` and `cc`** may be unknown (no measurement; a GPU without a compute
//!   capability). A term on an unknown value never holds, whatever its operator, including
//!   `!=` and `notin`.
//! - `!=` is the negation of `=`; `in` holds when `=` holds for some item, `notin` when it
//!   holds for none (both with the same unknown-value rule as above).
//!
//! # Canonical text
//!
//! [`Query`]'s `Display` prints the canonical form: canonical field names, no spaces around
//! symbolic operators, `field in [a,b]` for lists, numbers in shortest exact decimal form,
//! text values as given (quoted with `"` when needed). Parsing the canonical text gives back
//! an equal [`Query`]. Numbers are stored as exact integers, never floats.
//!
//! # Errors
//!
//! A term is never dropped: any term that does not parse fails the whole query with a
//! [`QueryError`] naming the term (its 1-based index, its text and its 1-based character
//! column in the input) and listing the valid choices.

mod error;
mod numeric;
mod parse;
#[cfg(test)]
mod tests;

pub use error::{QueryError, TermPos};
pub use numeric::{NumericTerm, OfferNumbers};

use crate::offer::Offer;
use crate::price::format_fixed;
use crate::spec::{ComputeCapability, Interconnect};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A field a term compares. See the module docs for each field's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Gpu,
    Vram,
    Count,
    Price,
    Region,
    Cc,
    Interconnect,
    Provider,
    Latency,
    Cpu,
    Ram,
    Disk,
    Duration,
}

/// What kind of value a field takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Whole,
    Decimal,
    Cc,
    Interconnect,
}

const TEXT_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Contains, Op::In, Op::NotIn];
const ENUM_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::In, Op::NotIn];
const NUMERIC_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge, Op::In, Op::NotIn];

impl Field {
    /// Every field, in the order error messages list them.
    pub const ALL: [Field; 13] = [
        Field::Gpu,
        Field::Vram,
        Field::Count,
        Field::Price,
        Field::Region,
        Field::Cc,
        Field::Interconnect,
        Field::Provider,
        Field::Latency,
        Field::Cpu,
        Field::Ram,
        Field::Disk,
        Field::Duration,
    ];

    /// Other names accepted for a field (printed back under the canonical name).
    pub const ALIASES: [(&'static str, Field); 5] = [
        ("model", Field::Gpu),
        ("vram_gib", Field::Vram),
        ("gpus", Field::Count),
        ("num_gpus", Field::Count),
        ("cores", Field::Cpu),
    ];

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Gpu => "gpu",
            Field::Vram => "vram",
            Field::Count => "count",
            Field::Price => "price",
            Field::Region => "region",
            Field::Cc => "cc",
            Field::Interconnect => "interconnect",
            Field::Provider => "provider",
            Field::Latency => "latency",
            Field::Cpu => "cpu",
            Field::Ram => "ram",
            Field::Disk => "disk",
            Field::Duration => "duration",
        }
    }

    /// Looks a field up by canonical name or alias, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL
            .into_iter()
            .map(|f| (f.as_str(), f))
            .chain(Field::ALIASES)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, f)| f)
    }

    /// The operators this field accepts.
    pub fn ops(self) -> &'static [Op] {
        match self.kind() {
            Kind::Text if self == Field::Provider => ENUM_OPS,
            Kind::Text => TEXT_OPS,
            Kind::Interconnect => ENUM_OPS,
            Kind::Whole | Kind::Decimal | Kind::Cc => NUMERIC_OPS,
        }
    }

    /// What a value of this field is, with an example (used in error messages).
    pub fn value_hint(self) -> &'static str {
        match self {
            Field::Gpu => "a GPU model, e.g. h100 or rtx4090",
            Field::Vram => "GiB per GPU, e.g. 80",
            Field::Count => "free GPUs, e.g. 8",
            Field::Price => "USD per GPU-hour, e.g. 2.5",
            Field::Region => "a region code, e.g. us-east or DE",
            Field::Cc => "compute capability MAJOR.MINOR, e.g. 8.9",
            Field::Interconnect => "one of pcie, sxm, nvlink",
            Field::Provider => "a node id or a prefix of it, e.g. 12D3KooW…",
            Field::Latency => "milliseconds, e.g. 50",
            Field::Cpu => "CPU cores, e.g. 32",
            Field::Ram => "GiB of host RAM, e.g. 256",
            Field::Disk => "GiB of disk, e.g. 1000",
            Field::Duration => "hours of the longest lease, e.g. 24 or 0.5",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Field::Gpu | Field::Region | Field::Provider => Kind::Text,
            Field::Vram | Field::Count | Field::Cpu | Field::Disk => Kind::Whole,
            Field::Price | Field::Latency | Field::Ram | Field::Duration => Kind::Decimal,
            Field::Cc => Kind::Cc,
            Field::Interconnect => Kind::Interconnect,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `=` (also written `==`).
    Eq,
    /// `!=`, the negation of `=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `~`, case-insensitive substring (`gpu`, `region`).
    Contains,
    /// `in`: `=` holds for some item of the list.
    In,
    /// `notin`: `=` holds for no item of the list.
    NotIn,
}

impl Op {
    /// Every operator, in the order error messages list them.
    pub const ALL: [Op; 9] =
        [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge, Op::Contains, Op::In, Op::NotIn];

    /// The canonical spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Contains => "~",
            Op::In => "in",
            Op::NotIn => "notin",
        }
    }

    /// Whether the operator takes a list (`in`, `notin`).
    pub fn takes_list(self) -> bool {
        matches!(self, Op::In | Op::NotIn)
    }

    /// Whether `offer_value.cmp(query_value) == ord` satisfies an ordering operator.
    fn accepts(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord.is_eq(),
            Op::Ne => ord.is_ne(),
            Op::Lt => ord.is_lt(),
            Op::Le => ord.is_le(),
            Op::Gt => ord.is_gt(),
            Op::Ge => ord.is_ge(),
            Op::Contains | Op::In | Op::NotIn => false,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exact non-negative decimal with up to 6 fractional digits, stored as millionths
/// (`2.5` is `2_500_000`). Prices are micro-USD in this form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decimal(u64);

impl Decimal {
    /// Fractional digits kept.
    pub const SCALE: u32 = 6;
    /// Units of the last digit in one.
    pub const ONE: u64 = 1_000_000;

    /// The decimal `millionths / 1_000_000`.
    pub fn from_millionths(millionths: u64) -> Decimal {
        Decimal(millionths)
    }

    /// The value in millionths.
    pub fn millionths(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Decimal {
    /// Shortest exact form: `2.5`, `80`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_fixed(u128::from(self.0), Decimal::SCALE, 0))
    }
}

/// One value of a term, typed by its field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// `gpu`, `region`, `provider`: the text as written (after unquoting).
    Text(String),
    /// `vram`, `count`, `cpu`, `disk`.
    Whole(u64),
    /// `price` (USD), `latency` (ms), `ram` (GiB), `duration` (hours).
    Decimal(Decimal),
    /// `cc`.
    Cc(ComputeCapability),
    /// `interconnect`.
    Interconnect(Interconnect),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Text(s) if parse::is_bare_safe(s) => f.write_str(s),
            Scalar::Text(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")
            }
            Scalar::Whole(n) => write!(f, "{n}"),
            Scalar::Decimal(d) => write!(f, "{d}"),
            Scalar::Cc(cc) => write!(f, "{cc}"),
            Scalar::Interconnect(i) => write!(f, "{i}"),
        }
    }
}

/// A term's value: one scalar, or a non-empty list for `in` / `notin`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    One(Scalar),
    List(Vec<Scalar>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::One(s) => write!(f, "{s}"),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, s) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{s}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// What a term looks at, for evaluating a query over many offers at once: terms on the GPU
/// spec are the same for every offer of a GPU group, terms on the provider (and its latency)
/// the same for every offer of a provider, terms on the region the same for every offer in
/// it; only the rest differ offer by offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `gpu`, `vram`, `cc`, `interconnect`.
    Spec,
    /// `provider`, `latency`.
    Provider,
    /// `region`.
    Region,
    /// `count`, `price`, `cpu`, `ram`, `disk`, `duration`.
    Offer,
}

impl Field {
    /// What the field's value depends on.
    pub fn scope(self) -> Scope {
        match self {
            Field::Gpu | Field::Vram | Field::Cc | Field::Interconnect => Scope::Spec,
            Field::Provider | Field::Latency => Scope::Provider,
            Field::Region => Scope::Region,
            Field::Count | Field::Price | Field::Cpu | Field::Ram | Field::Disk | Field::Duration => {
                Scope::Offer
            }
        }
    }
}

/// The values of an offer that terms compare. [`Offer`] implements it; an index may
/// implement it over a compact row.
pub trait Fields {
    fn model(&self) -> &str;
    fn vram_mib(&self) -> u32;
    fn compute_capability(&self) -> Option<ComputeCapability>;
    fn interconnect(&self) -> Interconnect;
    fn gpu_free(&self) -> u32;
    fn price_micros(&self) -> u64;
    fn region(&self) -> &str;
    fn provider(&self) -> &crate::id::NodeId;
    fn cpu_cores(&self) -> u32;
    fn ram_mib(&self) -> u64;
    fn disk_gib(&self) -> u64;
    fn max_duration_s(&self) -> u64;
}

impl Fields for Offer {
    fn model(&self) -> &str {
        &self.gpu.model
    }
    fn vram_mib(&self) -> u32 {
        self.gpu.vram_mib
    }
    fn compute_capability(&self) -> Option<ComputeCapability> {
        self.gpu.compute_capability
    }
    fn interconnect(&self) -> Interconnect {
        self.gpu.interconnect
    }
    fn gpu_free(&self) -> u32 {
        self.gpu_free
    }
    fn price_micros(&self) -> u64 {
        self.price.0
    }
    fn region(&self) -> &str {
        &self.host.region
    }
    fn provider(&self) -> &crate::id::NodeId {
        &self.provider
    }
    fn cpu_cores(&self) -> u32 {
        self.host.cpu_cores
    }
    fn ram_mib(&self) -> u64 {
        self.host.ram_mib
    }
    fn disk_gib(&self) -> u64 {
        self.host.disk_gib
    }
    fn max_duration_s(&self) -> u64 {
        self.max_duration_s
    }
}

/// One `field op value` condition. Only [`Query::parse`] builds terms, so every term is
/// well-typed: its operator applies to its field, list operators have a non-empty list and
/// the others one scalar of the field's kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Term {
    field: Field,
    op: Op,
    value: Value,
}

impl Term {
    pub fn field(&self) -> Field {
        self.field
    }

    pub fn op(&self) -> Op {
        self.op
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Whether `offer` (with its measured latency, if any) satisfies this term. `offer` is an
    /// [`Offer`] or any other view of one ([`Fields`]).
    pub fn matches<F: Fields + ?Sized>(&self, offer: &F, latency_ms: Option<u32>) -> bool {
        let known = match self.field {
            Field::Latency => latency_ms.is_some(),
            Field::Cc => offer.compute_capability().is_some(),
            _ => true,
        };
        if !known {
            return false;
        }
        let eq = |s: &Scalar| self.holds(Op::Eq, offer, latency_ms, s);
        match (&self.value, self.op) {
            (Value::List(items), Op::In) => items.iter().any(eq),
            (Value::List(items), Op::NotIn) => !items.iter().any(eq),
            (Value::One(s), op) => self.holds(op, offer, latency_ms, s),
            (Value::List(_), _) => false, // not built by the parser
        }
    }

    /// Whether `op` holds between the offer's value and one scalar.
    fn holds<F: Fields + ?Sized>(&self, op: Op, offer: &F, latency_ms: Option<u32>, s: &Scalar) -> bool {
        match (self.field, s) {
            (Field::Gpu, Scalar::Text(v)) => {
                let v = normalise(v);
                match op {
                    Op::Eq => gpu_eq(offer.model(), &v),
                    Op::Ne => !gpu_eq(offer.model(), &v),
                    Op::Contains => normalise(offer.model()).contains(&v),
                    _ => false,
                }
            }
            (Field::Region, Scalar::Text(v)) => match op {
                Op::Eq => region_eq(offer.region(), v),
                Op::Ne => !region_eq(offer.region(), v),
                Op::Contains => offer.region().to_ascii_lowercase().contains(&v.to_ascii_lowercase()),
                _ => false,
            },
            (Field::Provider, Scalar::Text(v)) => {
                let prefix = offer.provider().to_string().starts_with(v.as_str());
                match op {
                    Op::Eq => prefix,
                    Op::Ne => !prefix,
                    _ => false,
                }
            }
            (Field::Interconnect, Scalar::Interconnect(i)) => match op {
                Op::Eq => offer.interconnect() == *i,
                Op::Ne => offer.interconnect() != *i,
                _ => false,
            },
            _ => compare(self.field, offer, latency_ms, s).is_some_and(|ord| op.accepts(ord)),
        }
    }
}

/// The ordering of the offer's value against a numeric scalar, in exact integer arithmetic;
/// `None` when the offer's value is unknown (or the scalar is not numeric).
fn compare<F: Fields + ?Sized>(
    field: Field,
    offer: &F,
    latency_ms: Option<u32>,
    s: &Scalar,
) -> Option<Ordering> {
    const ONE: u128 = Decimal::ONE as u128;
    let wide = |d: &Decimal| u128::from(d.0);
    match (field, s) {
        // `GpuSpec::vram_gib_rounded` computed in u64 so that no `vram_mib` can overflow.
        (Field::Vram, Scalar::Whole(v)) => Some(((u64::from(offer.vram_mib()) + 512) / 1024).cmp(v)),
        (Field::Count, Scalar::Whole(v)) => Some(u64::from(offer.gpu_free()).cmp(v)),
        (Field::Cpu, Scalar::Whole(v)) => Some(u64::from(offer.cpu_cores()).cmp(v)),
        (Field::Disk, Scalar::Whole(v)) => Some(offer.disk_gib().cmp(v)),
        (Field::Price, Scalar::Decimal(d)) => Some(offer.price_micros().cmp(&d.0)),
        // MiB against GiB × 1024, both scaled by 10^6.
        (Field::Ram, Scalar::Decimal(d)) => Some((u128::from(offer.ram_mib()) * ONE).cmp(&(wide(d) * 1024))),
        // Seconds against hours × 3600, both scaled by 10^6.
        (Field::Duration, Scalar::Decimal(d)) => {
            Some((u128::from(offer.max_duration_s()) * ONE).cmp(&(wide(d) * 3600)))
        }
        (Field::Latency, Scalar::Decimal(d)) => latency_ms.map(|l| (u128::from(l) * ONE).cmp(&wide(d))),
        (Field::Cc, Scalar::Cc(c)) => offer.compute_capability().map(|o| o.cmp(c)),
        _ => None,
    }
}

/// Lowercase ASCII letters and digits of `s`, in order.
fn normalise(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// Whether the normalised value `v` is the concatenation of a contiguous run of the model's
/// tokens.
fn gpu_eq(model: &str, v: &str) -> bool {
    let lower = model.to_ascii_lowercase();
    let tokens: Vec<&str> =
        lower.split(|c: char| !c.is_ascii_alphanumeric()).filter(|t| !t.is_empty()).collect();
    (0..tokens.len()).any(|i| {
        let mut rest = v;
        for t in &tokens[i..] {
            match rest.strip_prefix(t) {
                Some("") => return true,
                Some(r) => rest = r,
                None => return false,
            }
        }
        false
    })
}

/// `region=v`: equal, or a sub-region `v-…`, ignoring ASCII case.
fn region_eq(region: &str, v: &str) -> bool {
    let (r, v) = (region.as_bytes(), v.as_bytes());
    r.eq_ignore_ascii_case(v)
        || (r.len() > v.len() && r[..v.len()].eq_ignore_ascii_case(v) && r[v.len()] == b'-')
}

/// A parsed query: terms that must all hold. See the module docs for the language.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Query {
    terms: Vec<Term>,
}

impl Query {
    /// Parses a query. The empty string is the query that matches everything.
    pub fn parse(input: &str) -> Result<Query, QueryError> {
        parse::parse_query(input)
    }

    /// Parses command-line arguments joined with single spaces, so
    /// `gpumesh search gpu=h100 price '<=' 2.5` and `gpumesh search 'gpu=h100 price<=2.5'`
    /// mean the same. Error columns refer to the joined text.
    pub fn parse_args(args: &[String]) -> Result<Query, QueryError> {
        Query::parse(&args.join(" "))
    }

    /// Whether `offer`, whose provider measured `latency_ms` away (`None`: not measured),
    /// satisfies every term.
    pub fn matches<F: Fields + ?Sized>(&self, offer: &F, latency_ms: Option<u32>) -> bool {
        self.terms.iter().all(|t| t.matches(offer, latency_ms))
    }

    /// Whether the query has no terms (matches everything).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The terms, in input order.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// Whether any term is on `latency`, i.e. whether the caller must measure latency for
    /// the query to match anything.
    pub fn uses_latency(&self) -> bool {
        self.terms.iter().any(|t| t.field == Field::Latency)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op.takes_list() {
            write!(f, "{} {} {}", self.field, self.op, self.value)
        } else {
            write!(f, "{}{}{}", self.field, self.op, self.value)
        }
    }
}

impl fmt::Display for Query {
    /// The canonical text; parsing it gives back an equal query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

impl FromStr for Query {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Query, QueryError> {
        Query::parse(s)
    }
}

impl serde::Serialize for Query {
    /// As its canonical text.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Query {
    /// From query text.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Query, D::Error> {
        let text = String::deserialize(d)?;
        Query::parse(&text).map_err(serde::de::Error::custom)
    }
}
