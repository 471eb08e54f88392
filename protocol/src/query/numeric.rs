//! Offer-scope terms compiled to integer comparisons, for evaluating them over many rows.

use super::{Decimal, Field, Fields, Op, Scalar, Scope, Term, Value};

/// An offer's own numeric values: what [`Scope::Offer`] terms compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OfferNumbers {
    pub gpu_free: u32,
    pub cpu_cores: u32,
    pub price_micros: u64,
    pub ram_mib: u64,
    pub disk_gib: u64,
    pub max_duration_s: u64,
}

impl OfferNumbers {
    /// The numbers of an offer.
    pub fn of<F: Fields + ?Sized>(o: &F) -> OfferNumbers {
        OfferNumbers {
            gpu_free: o.gpu_free(),
            cpu_cores: o.cpu_cores(),
            price_micros: o.price_micros(),
            ram_mib: o.ram_mib(),
            disk_gib: o.disk_gib(),
            max_duration_s: o.max_duration_s(),
        }
    }
}

/// A [`Scope::Offer`] term compiled to integer comparisons, for evaluating it over many rows.
/// It holds exactly when [`Term::matches`] does (both sides are scaled as [`Term::matches`]
/// compares them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumericTerm {
    field: Field,
    op: Op,
    rhs: Vec<u128>,
}

impl NumericTerm {
    fn lhs(&self, n: &OfferNumbers) -> u128 {
        const ONE: u128 = Decimal::ONE as u128;
        match self.field {
            Field::Count => u128::from(n.gpu_free),
            Field::Cpu => u128::from(n.cpu_cores),
            Field::Disk => u128::from(n.disk_gib),
            Field::Price => u128::from(n.price_micros),
            Field::Ram => u128::from(n.ram_mib) * ONE,
            _ => u128::from(n.max_duration_s) * ONE,
        }
    }

    /// The field the term compares.
    pub fn field(&self) -> Field {
        self.field
    }

    /// The term as an inclusive range `lo..=hi` of the field's raw value (as
    /// [`OfferNumbers`] holds it: MiB of RAM, seconds of duration), for testing a column of
    /// values without scaling each one; `lo > hi` when no value can hold. `None` for `!=`,
    /// `in` and `notin`, which are not one range: use [`NumericTerm::test`].
    pub fn range(&self) -> Option<(u64, u64)> {
        const EMPTY: (u64, u64) = (1, 0);
        let scale = match self.field {
            Field::Ram | Field::Duration => Decimal::ONE as u128,
            _ => 1,
        };
        let r = *self.rhs.first()?;
        let (floor, ceil) = (r / scale, r.div_ceil(scale));
        let fit = |v: u128| u64::try_from(v).ok();
        Some(match self.op {
            Op::Eq if r % scale == 0 => fit(floor).map_or(EMPTY, |v| (v, v)),
            Op::Eq => EMPTY,
            Op::Lt if ceil == 0 => EMPTY,
            Op::Lt => (0, fit(ceil - 1).unwrap_or(u64::MAX)),
            Op::Le => (0, fit(floor).unwrap_or(u64::MAX)),
            Op::Gt => fit(floor + 1).map_or(EMPTY, |lo| (lo, u64::MAX)),
            Op::Ge => fit(ceil).map_or(EMPTY, |lo| (lo, u64::MAX)),
            Op::Ne | Op::Contains | Op::In | Op::NotIn => return None,
        })
    }

    /// Whether the term holds for an offer with these numbers.
    #[inline]
    pub fn test(&self, n: &OfferNumbers) -> bool {
        let lhs = self.lhs(n);
        match self.op {
            Op::In => self.rhs.contains(&lhs),
            Op::NotIn => !self.rhs.contains(&lhs),
            op => self.rhs.first().is_some_and(|r| op.accepts(lhs.cmp(r))),
        }
    }
}

impl Term {
    /// This term compiled to integer comparisons, if it is a [`Scope::Offer`] term.
    pub fn numeric(&self) -> Option<NumericTerm> {
        if self.field.scope() != Scope::Offer {
            return None;
        }
        let scale = |s: &Scalar| -> Option<u128> {
            match (self.field, s) {
                (Field::Count | Field::Cpu | Field::Disk, Scalar::Whole(v)) => Some(u128::from(*v)),
                (Field::Price, Scalar::Decimal(d)) => Some(u128::from(d.0)),
                (Field::Ram, Scalar::Decimal(d)) => Some(u128::from(d.0) * 1024),
                (Field::Duration, Scalar::Decimal(d)) => Some(u128::from(d.0) * 3600),
                _ => None,
            }
        };
        let rhs = match &self.value {
            Value::One(s) => vec![scale(s)?],
            Value::List(items) => items.iter().map(scale).collect::<Option<Vec<_>>>()?,
        };
        Some(NumericTerm { field: self.field, op: self.op, rhs })
    }
}
