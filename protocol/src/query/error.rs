//! [`QueryError`]: why a query did not parse, one variant per cause, each pointing at its term.

use super::{Field, Op};
use std::fmt;

/// Where in the input a failing term is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TermPos {
    /// 1-based index of the term in the query.
    pub index: usize,
    /// 1-based character (not byte) column where the term starts.
    pub column: usize,
    /// The term's text as written (as far as it could be delimited).
    pub text: String,
}

impl TermPos {
    /// The term of `input` at byte range `start..end` (trailing whitespace trimmed).
    pub(super) fn new(input: &str, index: usize, start: usize, end: usize) -> TermPos {
        let end = end.clamp(start, input.len());
        TermPos {
            index,
            column: input[..start].chars().count() + 1,
            text: input[start..end].trim_end().to_string(),
        }
    }
}

impl fmt::Display for TermPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "term {} `{}` (column {})", self.index, self.text, self.column)
    }
}

/// The fields, comma-separated, as error messages list them.
pub(super) const FIELD_LIST: &str = "gpu, vram, count, price, region, cc, interconnect, \
                                      provider, latency, cpu, ram, disk, duration";

/// Every operator, space-separated.
const OP_LIST: &str = "= != < <= > >= ~ in notin";

/// Why a query did not parse. Every variant carries the failing term's position
/// ([`QueryError::term`]); the message names the term and the valid choices.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The term does not start with a field name.
    #[error(
        "{at}: expected a field name, found `{found}`; a term is FIELD OP VALUE (e.g. gpu=h100) \
         and the fields are {FIELD_LIST}"
    )]
    MissingField { at: TermPos, found: String },

    /// The field name is not a known field or alias.
    #[error(
        "{at}: unknown field `{field}`; valid fields: {FIELD_LIST}{hint}",
        hint = DidYouMean(*.suggestion)
    )]
    UnknownField { at: TermPos, field: String, suggestion: Option<&'static str> },

    /// No operator follows the field name.
    #[error(
        "{at}: expected an operator after `{field}`, found {found}; use one of {OP_LIST} \
         (a term is FIELD OP VALUE, e.g. gpu=h100)",
        found = Found(.found.as_deref())
    )]
    MissingOperator { at: TermPos, field: String, found: Option<String> },

    /// A run of operator characters that is not an operator (`=>`, `<>`, `!`).
    #[error("{at}: `{op}` is not an operator; use one of {OP_LIST}")]
    UnknownOperator { at: TermPos, op: String },

    /// The operator does not apply to the field (`gpu<5`).
    #[error(
        "{at}: operator `{op}` does not apply to `{field}`; use one of {ops}",
        ops = OpList(field.ops())
    )]
    OperatorNotAllowed { at: TermPos, op: Op, field: Field },

    /// Nothing (or the next term) follows the operator.
    #[error("{at}: missing value after `{op}` (expected {expected})")]
    MissingValue { at: TermPos, op: Op, expected: &'static str },

    /// A quoted value has no closing quote.
    #[error("{at}: unterminated quote: no closing `{quote}`")]
    UnterminatedQuote { at: TermPos, quote: char },

    /// A backslash escape other than `\"`, `\'`, `\\`.
    #[error("{at}: unknown escape `\\{escape}` in a quoted value; the escapes are \\\" \\' \\\\")]
    BadEscape { at: TermPos, escape: char },

    /// A list has no closing `]`.
    #[error("{at}: unterminated list: no closing `]`")]
    UnterminatedList { at: TermPos },

    /// `[]`.
    #[error("{at}: empty list after `{op}`; give at least one value, e.g. [h100, a100]")]
    EmptyList { at: TermPos, op: Op },

    /// An empty list item (`[a,,b]`, `[a,]`, `a,,b`).
    #[error("{at}: empty item in the list; separate values with single commas, e.g. [h100, a100]")]
    EmptyListItem { at: TermPos },

    /// Something other than `,` or `]` after a list item.
    #[error("{at}: expected `,` or `]` in the list, found `{found}`")]
    ListSyntax { at: TermPos, found: char },

    /// A list given to an operator other than `in` / `notin`.
    #[error("{at}: a list of values needs `in` or `notin`, not `{op}` (e.g. gpu in [h100, a100])")]
    ListNeedsIn { at: TermPos, op: Op },

    /// A bare value containing a character that needs quoting.
    #[error(
        "{at}: `{value}` contains `{ch}`; separate terms with spaces, and quote a value that \
         contains whitespace or any of = < > ! ~ [ ] , \" '"
    )]
    UnquotedSpecial { at: TermPos, value: String, ch: char },

    /// Text right after a quoted value or a list, with no whitespace between.
    #[error("{at}: unexpected `{found}` after the value; separate terms with spaces")]
    JunkAfterValue { at: TermPos, found: char },

    /// An empty text value, or a `gpu` value with no letter or digit.
    #[error(
        "{at}: the value `{value}` is empty or has no letters or digits (expected {hint})",
        hint = field.value_hint()
    )]
    EmptyValue { at: TermPos, field: Field, value: String },

    /// Not a non-negative decimal number.
    #[error("{at}: `{value}` is not a number ({hint})", hint = field.value_hint())]
    NotANumber { at: TermPos, field: Field, value: String },

    /// A fractional number for a whole-number field.
    #[error("{at}: `{value}` is not a whole number ({hint})", hint = field.value_hint())]
    NotWholeNumber { at: TermPos, field: Field, value: String },

    /// More than 6 decimal places.
    #[error("{at}: `{value}` has more than 6 decimal places ({hint})", hint = field.value_hint())]
    TooPrecise { at: TermPos, field: Field, value: String },

    /// A number beyond the representable range.
    #[error("{at}: `{value}` is too large ({hint})", hint = field.value_hint())]
    NumberTooLarge { at: TermPos, field: Field, value: String },

    /// Not `MAJOR.MINOR`.
    #[error("{at}: `{value}` is not a compute capability; write MAJOR.MINOR, e.g. 8.9")]
    BadComputeCapability { at: TermPos, value: String },

    /// Not one of the interconnects.
    #[error("{at}: `{value}` is not an interconnect; use one of pcie, sxm, nvlink")]
    BadInterconnect { at: TermPos, value: String },

    /// Characters that no region code has.
    #[error("{at}: `{value}` is not a region code; use letters, digits and `-`, e.g. us-east or DE")]
    BadRegion { at: TermPos, value: String },

    /// Characters that no node id has.
    #[error(
        "{at}: `{value}` is not a node id or a prefix of one; node ids are base58 (no 0, O, I \
         or l), e.g. 12D3KooW…"
    )]
    BadProvider { at: TermPos, value: String },
}

impl QueryError {
    /// The failing term: index, column and text.
    pub fn term(&self) -> &TermPos {
        use QueryError::*;
        match self {
            MissingField { at, .. }
            | UnknownField { at, .. }
            | MissingOperator { at, .. }
            | UnknownOperator { at, .. }
            | OperatorNotAllowed { at, .. }
            | MissingValue { at, .. }
            | UnterminatedQuote { at, .. }
            | BadEscape { at, .. }
            | UnterminatedList { at }
            | EmptyList { at, .. }
            | EmptyListItem { at }
            | ListSyntax { at, .. }
            | ListNeedsIn { at, .. }
            | UnquotedSpecial { at, .. }
            | JunkAfterValue { at, .. }
            | EmptyValue { at, .. }
            | NotANumber { at, .. }
            | NotWholeNumber { at, .. }
            | TooPrecise { at, .. }
            | NumberTooLarge { at, .. }
            | BadComputeCapability { at, .. }
            | BadInterconnect { at, .. }
            | BadRegion { at, .. }
            | BadProvider { at, .. } => at,
        }
    }
}

/// ` (did you mean `x`?)` or nothing.
struct DidYouMean(Option<&'static str>);

impl fmt::Display for DidYouMean {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, " (did you mean `{s}`?)"),
            None => Ok(()),
        }
    }
}

/// `` `x` `` or `the end of the query`.
struct Found<'a>(Option<&'a str>);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, "`{s}`"),
            None => f.write_str("the end of the query"),
        }
    }
}

/// Operators, space-separated.
struct OpList(&'static [Op]);

impl fmt::Display for OpList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(op.as_str())?;
        }
        Ok(())
    }
}

/// The field name or alias closest to `name` (optimal string alignment distance, so a swap
/// of two neighbours counts 1), if it is close enough to be a likely typo.
pub(super) fn suggest_field(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    let names = Field::ALL.iter().map(|f| f.as_str()).chain(Field::ALIASES.iter().map(|(n, _)| *n));
    names
        .map(|n| (edit_distance(&name, n), n))
        .filter(|(d, n)| *d <= 2 && *d < n.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, v) in d[0].iter_mut().enumerate() {
        *v = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    //! Every error kind: its variant, and that its message names the term and the choices.

    use super::*;
    use crate::query::Query;

    fn err(text: &str) -> QueryError {
        match Query::parse(text) {
            Ok(q) => panic!("{text:?} should not parse, got {q:?}"),
            Err(e) => e,
        }
    }

    fn q(text: &str) -> Query {
        Query::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    #[test]
    fn field_tables_agree() {
        let names: Vec<&str> = Field::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(names.join(", "), FIELD_LIST);
        for f in Field::ALL {
            assert_eq!(Field::from_name(&f.as_str().to_uppercase()), Some(f));
        }
        for (alias, f) in Field::ALIASES {
            assert_eq!(Field::from_name(alias), Some(f));
        }
    }

    #[test]
    fn error_unknown_field_names_term_column_fields_and_suggestion() {
        let e = err("gpu=h100 vrma>=80");
        assert!(matches!(e, QueryError::UnknownField { .. }));
        assert_eq!(
            e.to_string(),
            "term 2 `vrma>=80` (column 10): unknown field `vrma`; valid fields: gpu, vram, count, \
         price, region, cc, interconnect, provider, latency, cpu, ram, disk, duration \
         (did you mean `vram`?)"
        );
        assert_eq!(e.term(), &TermPos { index: 2, column: 10, text: "vrma>=80".into() });
        let e = err("colour=red");
        assert!(!e.to_string().contains("did you mean"), "{e}");
        // The unknown field is reported even when the value is bad too.
        assert!(matches!(err("vrma>="), QueryError::UnknownField { .. }));
    }

    #[test]
    fn error_columns_count_characters() {
        let e = err("gpu=\"ü100\" vrma=1");
        assert_eq!(e.term().column, 12);
    }

    #[test]
    fn error_operator_not_allowed_lists_the_field_operators() {
        let e = err("gpu<5");
        assert!(matches!(e, QueryError::OperatorNotAllowed { op: Op::Lt, field: Field::Gpu, .. }));
        assert_eq!(
            e.to_string(),
            "term 1 `gpu<5` (column 1): operator `<` does not apply to `gpu`; \
             use one of = != ~ in notin"
        );
        let e = err("price~2");
        assert!(e.to_string().ends_with("use one of = != < <= > >= in notin"), "{e}");
        let e = err("interconnect>sxm");
        assert!(e.to_string().ends_with("use one of = != in notin"), "{e}");
        assert!(matches!(err("provider~12D"), QueryError::OperatorNotAllowed { .. }));
    }

    #[test]
    fn error_not_a_number_names_the_unit() {
        let e = err("gpu=h100 vram>=80 price<=abc");
        assert!(matches!(e, QueryError::NotANumber { field: Field::Price, .. }));
        assert_eq!(
            e.to_string(),
            "term 3 `price<=abc` (column 19): `abc` is not a number (USD per GPU-hour, e.g. 2.5)"
        );
        for text in ["vram>=-1", "vram>=$80", "latency<1e3", "ram>=1.5.2"] {
            let e = Query::parse(text).expect_err(text);
            assert!(matches!(e, QueryError::NotANumber { .. }), "{text}: {e:?}");
        }
        assert!(err("vram>=-1").to_string().contains("GiB per GPU, e.g. 80"));
    }

    #[test]
    fn error_number_shapes() {
        let e = err("count>=1.5");
        assert!(matches!(e, QueryError::NotWholeNumber { .. }));
        assert!(e.to_string().contains("`1.5` is not a whole number (free GPUs, e.g. 8)"), "{e}");
        assert_eq!(q("count>=2.0"), q("count>=2"));
        let e = err("price<=0.0000001");
        assert!(matches!(e, QueryError::TooPrecise { .. }));
        assert!(e.to_string().contains("more than 6 decimal places"), "{e}");
        for text in ["vram>=99999999999999999999", "price<=99999999999999", "disk<18446744073709551616"] {
            let e = err(text);
            assert!(matches!(e, QueryError::NumberTooLarge { .. }), "{text}: {e:?}");
            assert!(e.to_string().contains("is too large"), "{e}");
        }
        assert_eq!(q("disk<18446744073709551615").to_string(), "disk<18446744073709551615");
    }

    #[test]
    fn error_missing_field_and_operator() {
        let e = err("gpu=h100 >=80");
        assert!(matches!(e, QueryError::MissingField { .. }));
        assert!(
            e.to_string().starts_with("term 2 `>=80` (column 10): expected a field name, found `>=80`"),
            "{e}"
        );
        assert!(e.to_string().contains(FIELD_LIST));
        let e = err("h100");
        assert!(matches!(e, QueryError::MissingOperator { .. }));
        assert_eq!(
            e.to_string(),
            "term 1 `h100` (column 1): expected an operator after `h100`, found the end of \
             the query; use one of = != < <= > >= ~ in notin (a term is FIELD OP VALUE, \
             e.g. gpu=h100)"
        );
        let e = err("gpu h100");
        assert!(e.to_string().contains("expected an operator after `gpu`, found `h100`"), "{e}");
        assert_eq!(e.term().text, "gpu");
        let e = err("gpu [h100]");
        assert!(e.to_string().contains("found `[`"), "{e}");
    }

    #[test]
    fn error_unknown_operator() {
        for (text, op) in [("vram=>80", "=>"), ("vram<>80", "<>"), ("gpu!h100", "!"), ("vram===8", "===")] {
            let e = err(text);
            assert_eq!(e, QueryError::UnknownOperator { at: e.term().clone(), op: op.into() });
            assert!(
                e.to_string()
                    .contains(&format!("`{op}` is not an operator; use one of = != < <= > >= ~ in notin"))
            );
        }
    }

    #[test]
    fn error_missing_value() {
        let e = err("gpu=");
        assert!(matches!(e, QueryError::MissingValue { op: Op::Eq, .. }));
        assert_eq!(
            e.to_string(),
            "term 1 `gpu=` (column 1): missing value after `=` \
             (expected a GPU model, e.g. h100 or rtx4090)"
        );
        let e = err("gpu= vram>=80");
        assert!(matches!(e, QueryError::MissingValue { .. }), "{e:?}");
        assert_eq!(e.term().text, "gpu=");
        let e = err("price <=  ");
        assert!(e.to_string().contains("missing value after `<=` (expected USD per GPU-hour"), "{e}");
        assert!(matches!(err("gpu in"), QueryError::MissingValue { op: Op::In, .. }));
    }

    #[test]
    fn error_quotes() {
        let e = err("gpu=\"h100 vram>=80");
        assert!(matches!(e, QueryError::UnterminatedQuote { quote: '"', .. }));
        assert_eq!(
            e.to_string(),
            "term 1 `gpu=\"h100 vram>=80` (column 1): unterminated quote: no closing `\"`"
        );
        assert!(matches!(err("gpu='h100\\'"), QueryError::UnterminatedQuote { quote: '\'', .. }));
        let e = err(r#"gpu="a\nb""#);
        assert!(matches!(e, QueryError::BadEscape { escape: 'n', .. }));
        assert!(
            e.to_string().contains(r#"unknown escape `\n` in a quoted value; the escapes are \" \' \\"#),
            "{e}"
        );
        let e = err("gpu=\"h100\"x vram=1");
        assert!(matches!(e, QueryError::JunkAfterValue { found: 'x', .. }));
        assert_eq!(e.term().text, "gpu=\"h100\"x");
        assert!(e.to_string().contains("separate terms with spaces"));
    }

    #[test]
    fn error_lists() {
        let e = err("gpu in [h100, a100");
        assert!(matches!(e, QueryError::UnterminatedList { .. }));
        assert!(e.to_string().contains("unterminated list: no closing `]`"));
        let e = err("gpu in []");
        assert!(matches!(e, QueryError::EmptyList { op: Op::In, .. }));
        assert!(e.to_string().contains("empty list after `in`"), "{e}");
        assert!(matches!(err("gpu in [ ]"), QueryError::EmptyList { .. }));
        for text in ["gpu in [a,,b]", "gpu in [a,]", "gpu in [,a]", "gpu in a,,b", "gpu notin a,"] {
            let e = err(text);
            assert!(matches!(e, QueryError::EmptyListItem { .. }), "{text}: {e:?}");
            assert!(e.to_string().contains("empty item in the list"));
        }
        let e = err("gpu in [h100 a100]");
        assert!(matches!(e, QueryError::ListSyntax { found: 'a', .. }));
        assert!(e.to_string().contains("expected `,` or `]` in the list, found `a`"));
        for text in ["gpu=[h100]", "gpu=h100,a100", "vram>=[8]"] {
            let e = err(text);
            assert!(matches!(e, QueryError::ListNeedsIn { .. }), "{text}: {e:?}");
            assert!(e.to_string().contains("a list of values needs `in` or `notin`"));
        }
        assert!(matches!(err("gpu in [a]b"), QueryError::JunkAfterValue { found: 'b', .. }));
    }

    #[test]
    fn error_unquoted_special() {
        let e = err("price<=2.5gpu=h100");
        assert!(matches!(e, QueryError::UnquotedSpecial { ch: '=', .. }));
        assert!(e.to_string().contains("`2.5gpu=h100` contains `=`"), "{e}");
        assert!(matches!(err("gpu=h100]"), QueryError::UnquotedSpecial { ch: ']', .. }));
        assert!(matches!(err("gpu in [a'b]"), QueryError::UnquotedSpecial { ch: '\'', .. }));
    }

    #[test]
    fn error_text_values() {
        for text in ["gpu=\"\"", "gpu=--", "region=''", "provider=\"\"", "gpu in [h100, '-']"] {
            let e = err(text);
            assert!(matches!(e, QueryError::EmptyValue { .. }), "{text}: {e:?}");
            assert!(e.to_string().contains("is empty or has no letters or digits"));
        }
        let e = err("region=us_east");
        assert!(matches!(e, QueryError::BadRegion { .. }));
        assert!(e.to_string().contains("`us_east` is not a region code; use letters, digits and `-`"));
        let e = err("provider=0OIl");
        assert!(matches!(e, QueryError::BadProvider { .. }));
        assert!(e.to_string().contains("node ids are base58"));
        let e = err("interconnect=infiniband");
        assert!(matches!(e, QueryError::BadInterconnect { .. }));
        assert!(e.to_string().contains("`infiniband` is not an interconnect; use one of pcie, sxm, nvlink"));
        for text in ["cc>=x", "cc>=+8.9", "cc=8.", "cc=8.123"] {
            let e = err(text);
            assert!(matches!(e, QueryError::BadComputeCapability { .. }), "{text}: {e:?}");
            assert!(e.to_string().contains("write MAJOR.MINOR, e.g. 8.9"));
        }
    }
}
