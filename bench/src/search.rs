//! Search: 100k offers with a realistic spread of models, prices, regions and latencies, ten
//! representative queries (filters + sort + limit 20), against SQLite in memory with indexes
//! running the equivalent SQL over the same rows.

use crate::offers;
use crate::stats::Summary;
use crate::{Args, SuiteResult};
use anyhow::{Context, Result};
use gpumesh_protocol::query::{Field, Op, Query, Scalar, Term, Value};
use gpumesh_protocol::rank::SortKey;
use gpumesh_protocol::*;
use rusqlite::{Connection, params_from_iter, types::Value as Sql};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

const NET: &str = "bench-search";
const W: f64 = 0.5;
const LIMIT: usize = 20;

/// The representative queries and how each is sorted.
pub const QUERIES: [(&str, SortKey); 10] = [
    ("gpu=h100", SortKey::Price),
    ("gpu=h100 price<=2.5 count>=2", SortKey::Price),
    ("gpu in [h100,h200] count>=4 region=us", SortKey::Score),
    ("vram>=80 interconnect=sxm", SortKey::Latency),
    ("gpu=rtx4090 price<0.4 latency<100", SortKey::Price),
    ("price<=1 count>=2 cpu>=32", SortKey::Score),
    ("region=eu ram>=256 disk>=1000", SortKey::Price),
    ("cc>=9 vram>=40 duration>=48", SortKey::Latency),
    ("gpu~a latency<50", SortKey::Score),
    ("gpu notin [t4,rtx3090] price>=0.5 price<=3", SortKey::Price),
];

fn latency_of(p: &NodeId) -> Option<u32> {
    let b = p.as_bytes();
    (!b[0].is_multiple_of(5)).then_some(2 + u32::from(b[1]) % 180)
}

pub fn run(args: &Args) -> Result<SuiteResult> {
    let n = args.pick(args.book, 100_000, 20_000);
    let reps = if args.quick { 30 } else { 200 };
    let now = Timestamp(1_767_225_600_000);
    // A realistic market: four GPU groups per provider, each a different model, so the book
    // holds a few dozen distinct GPU specs (models × compute capabilities), as a real one
    // does, not thousands of made-up model names.
    let providers = (n as u64 / 4).max(1);
    let keys: Vec<SigningKey> = (0..providers).map(offers::key).collect();
    let mut book = OfferBook::new(BookConfig { max_offers_per_provider: 100_000, ..BookConfig::default() });
    let mut rows = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let k = &keys[(i % providers) as usize];
        let (p, j) = (i % providers, i / providers);
        // Model (p + j) mod 8: distinct for a provider's first eight offers.
        let variant = j / offers::MODELS.len() as u64;
        let o = offers::offer(k, NET, p + j, variant, i + 1, now);
        rows.push(o.clone());
        book.insert(Verified::seal(k, o), now).context("building the book")?;
    }
    // The latencies a node would have measured (one provider in five not yet measured).
    for k in &keys {
        let id = NodeId::from_bytes(k.verifying_key().to_bytes());
        book.set_latency(id, latency_of(&id));
    }
    let specs = rows
        .iter()
        .map(|o| (o.gpu.model.clone(), o.gpu.vram_mib, o.gpu.compute_capability, o.gpu.interconnect))
        .collect::<std::collections::HashSet<_>>()
        .len();
    let db = sqlite(&rows)?;

    let mut ours_all = Vec::new();
    let mut base_all = Vec::new();
    let mut per_query = Vec::new();
    let mut mismatches = 0;
    for (text, sort) in QUERIES {
        let q = Query::parse(text)?;
        let (sql, params) = to_sql(&q, sort, &rows)?;
        let mut stmt = db.prepare_cached(&sql)?;
        let mut ours = Vec::new();
        let mut base = Vec::new();
        let mut ours_ids = Vec::new();
        let mut base_ids = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            let hits = book.search(&q, sort, W, LIMIT, now);
            ours.push(t.elapsed());
            ours_ids = hits.iter().map(|h| h.offer.offer_id.as_bytes().to_vec()).collect();

            let t = Instant::now();
            let ids: Vec<Vec<u8>> = stmt
                .query_map(params_from_iter(params.iter()), |r| r.get::<_, Vec<u8>>(0))?
                .collect::<Result<_, _>>()?;
            base.push(t.elapsed());
            base_ids = ids;
        }
        if ours_ids != base_ids {
            mismatches += 1;
        }
        let (o, b) = (Summary::of(&ours), Summary::of(&base));
        per_query.push(json!({
            "query": text, "sort": sort.as_str(), "results": ours_ids.len(), "same_results": ours_ids == base_ids,
            "ours_p50_ms": o.p50_ms, "ours_p99_ms": o.p99_ms, "sqlite_p50_ms": b.p50_ms, "sqlite_p99_ms": b.p99_ms,
        }));
        ours_all.extend(ours);
        base_all.extend(base);
    }
    let (o, b) = (Summary::of(&ours_all), Summary::of(&base_all));
    let worst_ours_p99 = per_query.iter().filter_map(|q| q["ours_p99_ms"].as_f64()).fold(0.0f64, f64::max);
    let ratio = o.p99_ms / b.p99_ms.max(1e-9);
    let mut notes = vec![format!("per query: {}", serde_json::to_string(&per_query)?)];
    if mismatches > 0 {
        notes.push(format!("{mismatches} queries returned different top-{LIMIT} lists from SQLite"));
    }
    Ok(SuiteResult {
        suite: "search",
        ours: json!({"all_queries": o, "worst_query_p99_ms": worst_ours_p99}),
        baseline: json!({"all_queries": b}),
        ratio,
        headline: "p99 over all query runs: gpumesh offer book / SQLite in memory with indexes".into(),
        goal: "p99 <= 2 ms and ratio <= 1.0".into(),
        goal_met: Some(o.p99_ms <= 2.0 && ratio <= 1.0),
        params: json!({"offers": n, "providers": providers, "gpu_specs": specs, "queries": QUERIES.len(), "runs_per_query": reps, "limit": LIMIT}),
        notes,
    })
}

fn sqlite(rows: &[Offer]) -> Result<Connection> {
    let db = Connection::open_in_memory()?;
    db.execute_batch(
        "CREATE TABLE offers (
            offer_id BLOB PRIMARY KEY, provider BLOB NOT NULL, seq INTEGER NOT NULL,
            model TEXT NOT NULL, vram_gib INTEGER NOT NULL, cc INTEGER, interconnect TEXT NOT NULL,
            free INTEGER NOT NULL, price INTEGER NOT NULL, region TEXT NOT NULL, cpu INTEGER NOT NULL,
            ram_scaled INTEGER NOT NULL, disk INTEGER NOT NULL, duration_scaled INTEGER NOT NULL,
            latency INTEGER, expires_at INTEGER NOT NULL);
         CREATE INDEX by_model_price ON offers(model, price);
         CREATE INDEX by_price ON offers(price);
         CREATE INDEX by_region ON offers(region);
         CREATE INDEX by_latency ON offers(latency);
         CREATE INDEX by_vram ON offers(vram_gib);",
    )?;
    let tx = db.unchecked_transaction()?;
    {
        let mut ins =
            tx.prepare("INSERT INTO offers VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)")?;
        for o in rows {
            ins.execute(rusqlite::params![
                o.offer_id.as_bytes().to_vec(),
                o.provider.as_bytes().to_vec(),
                o.seq as i64,
                o.gpu.model,
                i64::from(o.gpu.vram_gib_rounded()),
                o.gpu.compute_capability.map(|c| i64::from(c.0) * 256 + i64::from(c.1)),
                o.gpu.interconnect.as_str(),
                i64::from(o.gpu_free),
                o.price.0 as i64,
                o.host.region,
                i64::from(o.host.cpu_cores),
                (o.host.ram_mib * 1_000_000) as i64,
                o.host.disk_gib as i64,
                (o.max_duration_s * 1_000_000) as i64,
                latency_of(&o.provider).map(i64::from),
                o.expires_at.0 as i64,
            ])?;
        }
    }
    tx.commit()?;
    db.execute_batch("ANALYZE")?;
    Ok(db)
}

/// The SQL equivalent of a query: text terms resolved to the values (models, regions,
/// providers) that satisfy them, numeric terms as comparisons on scaled integer columns.
fn to_sql(q: &Query, sort: SortKey, rows: &[Offer]) -> Result<(String, Vec<Sql>)> {
    let mut conds = vec!["expires_at > ?".to_string()];
    let mut params = vec![Sql::Integer(1_767_225_600_000)];
    let models: BTreeMap<String, &Offer> = rows.iter().map(|o| (o.gpu.model.clone(), o)).collect();
    let regions: BTreeMap<String, &Offer> = rows.iter().map(|o| (o.host.region.clone(), o)).collect();
    let providers: HashMap<NodeId, &Offer> = rows.iter().map(|o| (o.provider, o)).collect();
    for t in q.terms() {
        let resolve = |column: &str, set: Vec<Sql>, conds: &mut Vec<String>, params: &mut Vec<Sql>| {
            conds.push(format!("{column} IN ({})", vec!["?"; set.len().max(1)].join(",")));
            if set.is_empty() {
                params.push(Sql::Null);
            }
            params.extend(set);
        };
        match t.field() {
            Field::Gpu => {
                let set = models
                    .iter()
                    .filter(|(_, o)| t.matches(**o, None))
                    .map(|(m, _)| Sql::Text(m.clone()))
                    .collect();
                resolve("model", set, &mut conds, &mut params);
            }
            Field::Region => {
                let set = regions
                    .iter()
                    .filter(|(_, o)| t.matches(**o, None))
                    .map(|(r, _)| Sql::Text(r.clone()))
                    .collect();
                resolve("region", set, &mut conds, &mut params);
            }
            Field::Provider => {
                let set: BTreeSet<Vec<u8>> = providers
                    .iter()
                    .filter(|(_, o)| t.matches(**o, None))
                    .map(|(p, _)| p.as_bytes().to_vec())
                    .collect();
                resolve("provider", set.into_iter().map(Sql::Blob).collect(), &mut conds, &mut params);
            }
            Field::Interconnect => numeric(t, "interconnect", &mut conds, &mut params)?,
            Field::Vram => numeric(t, "vram_gib", &mut conds, &mut params)?,
            Field::Cc => numeric(t, "cc", &mut conds, &mut params)?,
            Field::Count => numeric(t, "free", &mut conds, &mut params)?,
            Field::Price => numeric(t, "price", &mut conds, &mut params)?,
            Field::Cpu => numeric(t, "cpu", &mut conds, &mut params)?,
            Field::Ram => numeric(t, "ram_scaled", &mut conds, &mut params)?,
            Field::Disk => numeric(t, "disk", &mut conds, &mut params)?,
            Field::Duration => numeric(t, "duration_scaled", &mut conds, &mut params)?,
            Field::Latency => numeric(t, "latency", &mut conds, &mut params)?,
        }
    }
    let tie = "price, latency IS NULL, latency, offer_id, provider, seq DESC";
    let filter = conds.join(" AND ");
    let sql = match sort {
        SortKey::Price => format!("SELECT offer_id FROM offers WHERE {filter} ORDER BY {tie} LIMIT {LIMIT}"),
        SortKey::Latency => format!(
            "SELECT offer_id FROM offers WHERE {filter} ORDER BY latency IS NULL, latency, {tie} LIMIT {LIMIT}"
        ),
        SortKey::Score => format!(
            "WITH m AS (SELECT * FROM offers WHERE {filter}),
                  r AS (SELECT min(price) AS pmin, max(price) AS pmax, min(latency) AS lmin, max(latency) AS lmax FROM m)
             SELECT offer_id FROM m, r ORDER BY
               MIN(1.0, MAX(0.0, {a} * (CASE WHEN pmax = pmin THEN 0.0 ELSE (price - pmin) * 1.0 / (pmax - pmin) END)
                 + {w} * (CASE WHEN latency IS NULL OR lmax IS NULL THEN 1.0 WHEN lmax = lmin THEN 0.0
                               ELSE (latency - lmin) * 1.0 / (lmax - lmin) END))),
               latency IS NULL, {tie} LIMIT {LIMIT}",
            a = 1.0 - W,
            w = W
        ),
    };
    Ok((sql, params))
}

/// A numeric (or interconnect) term as SQL on a column holding the same scaled integer
/// the query compares.
fn numeric(t: &Term, column: &str, conds: &mut Vec<String>, params: &mut Vec<Sql>) -> Result<()> {
    let value = |s: &Scalar| -> Result<Sql> {
        Ok(match (t.field(), s) {
            (Field::Ram, Scalar::Decimal(d)) => Sql::Integer((d.millionths() * 1024) as i64),
            (Field::Duration, Scalar::Decimal(d)) => Sql::Integer((d.millionths() * 3600) as i64),
            (Field::Latency, Scalar::Decimal(d)) => Sql::Real(d.millionths() as f64 / 1e6),
            (_, Scalar::Decimal(d)) => Sql::Integer(d.millionths() as i64),
            (_, Scalar::Whole(v)) => Sql::Integer(*v as i64),
            (_, Scalar::Cc(c)) => Sql::Integer(i64::from(c.0) * 256 + i64::from(c.1)),
            (_, Scalar::Interconnect(i)) => Sql::Text(i.as_str().into()),
            (_, Scalar::Text(s)) => Sql::Text(s.clone()),
        })
    };
    let (sql, vals) = match (t.op(), t.value()) {
        (Op::In | Op::NotIn, Value::List(items)) => {
            let not = if t.op() == Op::NotIn { "NOT " } else { "" };
            (
                format!("{column} {not}IN ({})", vec!["?"; items.len()].join(",")),
                items.iter().map(value).collect::<Result<Vec<_>>>()?,
            )
        }
        (op, Value::One(s)) => {
            // The comparison operators are spelled the same in SQL.
            let o = match op {
                Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => op.as_str(),
                _ => anyhow::bail!("operator {op:?} has no SQL form here"),
            };
            (format!("{column} {o} ?"), vec![value(s)?])
        }
        _ => anyhow::bail!("unexpected term {t}"),
    };
    // A term on an unknown value never holds; SQL's NULL comparisons agree, but make it plain.
    conds.push(format!("({column} IS NOT NULL AND {sql})"));
    params.extend(vals);
    Ok(())
}
