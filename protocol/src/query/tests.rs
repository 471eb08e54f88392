use super::*;
use crate::id::{NodeId, OfferId};
use crate::offer::PROTOCOL_VERSION;
use crate::price::Price;
use crate::spec::{GpuSpec, HostSpec};
use crate::time::Timestamp;
use proptest::prelude::*;

fn provider() -> NodeId {
    NodeId::from_bytes([7; 32])
}

/// An 8× H100 SXM offer in us-east at $2.50, 24 h max lease.
fn offer(model: &str) -> Offer {
    let provider = provider();
    let gpu = GpuSpec {
        vendor: "nvidia".into(),
        model: model.into(),
        vram_mib: 81559,
        compute_capability: Some(ComputeCapability(9, 0)),
        interconnect: Interconnect::Sxm,
        cuda_version: None,
        driver_version: None,
    };
    Offer {
        v: PROTOCOL_VERSION,
        network: "testnet".into(),
        offer_id: OfferId::derive(&provider, &gpu.group_key()),
        provider,
        seq: 1,
        issued_at: Timestamp(1_000),
        expires_at: Timestamp(61_000),
        gpu,
        gpu_total: 8,
        gpu_free: 6,
        host: HostSpec { cpu_cores: 64, ram_mib: 512 * 1024, disk_gib: 2000, region: "us-east".into() },
        price: Price(2_500_000),
        min_duration_s: 3600,
        max_duration_s: 86_400,
        addrs: vec![],
    }
}

fn q(text: &str) -> Query {
    Query::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

fn m(text: &str, o: &Offer) -> bool {
    q(text).matches(o, None)
}

#[test]
fn gpu_equality_matches_runs_of_model_tokens() {
    let h100 = offer("H100-SXM-80GB");
    for yes in ["gpu=h100", "gpu=H100SXM", "gpu=h100-sxm", "gpu='h100 sxm 80gb'", "gpu=80gb", "model=h100"] {
        assert!(m(yes, &h100), "{yes}");
    }
    for no in ["gpu=h10", "gpu=100", "gpu=h100sxm8", "gpu=a100", "gpu=sxm80"] {
        assert!(!m(no, &h100), "{no}");
    }
    // `sxm80` is not a run of whole tokens, but `sxm80gb` is.
    assert!(m("gpu=sxm80gb", &h100));
    let rtx = offer("RTX-4090");
    for yes in ["gpu=rtx4090", "gpu=\"RTX 4090\"", "gpu=4090", "gpu=RTX"] {
        assert!(m(yes, &rtx), "{yes}");
    }
    assert!(m("gpu=h100", &offer("NVIDIA H100 80GB HBM3")));
    assert!(!m("gpu=h100", &offer("NVIDIA H1000")));
}

#[test]
fn gpu_other_operators() {
    let h100 = offer("H100-SXM-80GB");
    assert!(m("gpu!=a100", &h100));
    assert!(!m("gpu!=h100", &h100));
    assert!(m("gpu~h10", &h100));
    assert!(m("gpu~'0-S'", &h100), "the value is normalised too");
    assert!(!m("gpu~a100", &h100));
    assert!(m("gpu in [a100, h100]", &h100));
    assert!(!m("gpu notin [a100, h100]", &h100));
    assert!(m("gpu notin a100,rtx4090", &h100));
}

#[test]
fn numeric_fields_compare_exactly() {
    let o = offer("H100");
    // vram: 81559 MiB rounds to 80 GiB.
    assert!(m("vram=80 vram>=80 vram<=80 vram>79 vram<81 vram!=81 vram_gib=80", &o));
    assert!(!m("vram>80", &o));
    // count is the free GPUs (6), not the total (8).
    assert!(m("count=6 gpus>=6 num_gpus<8", &o));
    assert!(!m("count>=8", &o));
    // price: exact to the micro-dollar.
    assert!(m("price=2.5 price<=2.5 price<=$2.50 price>2.499999 price<2.500001", &o));
    assert!(!m("price<2.5", &o));
    // cpu, ram (512 GiB), disk.
    assert!(m("cpu=64 cores>=64 ram=512 ram>511.999999 disk=2000 disk<2001", &o));
    let mut small = o.clone();
    small.host.ram_mib = 1536;
    assert!(m("ram=1.5 ram>1.499999", &small));
    small.host.ram_mib = 1537;
    assert!(m("ram>1.5 ram<1.501", &small), "1537 MiB = 1.5009765625 GiB");
    // duration: 86400 s = 24 h.
    assert!(m("duration=24 duration>=23.5 duration<24.000001", &o));
    let mut half = o.clone();
    half.max_duration_s = 1800;
    assert!(m("duration=0.5 duration=.5", &half));
    assert!(!m("duration>=1", &half));
}

#[test]
fn vram_rounding_cannot_overflow() {
    let mut o = offer("H100");
    o.gpu.vram_mib = u32::MAX;
    assert!(m("vram=4194304", &o));
}

#[test]
fn latency_terms_need_a_measurement() {
    let o = offer("H100");
    for text in ["latency<50", "latency!=50", "latency notin [1,2]", "latency in [49]", "latency>=0"] {
        assert!(!q(text).matches(&o, None), "{text} with no measurement");
    }
    assert!(q("latency<50").matches(&o, Some(49)));
    assert!(!q("latency<50").matches(&o, Some(50)));
    assert!(q("latency<50.5 latency>49.9 latency!=51").matches(&o, Some(50)));
    assert!(q("latency notin [1,2]").matches(&o, Some(3)));
    assert!(q("latency in [1,3]").matches(&o, Some(3)));
}

#[test]
fn compute_capability_compares_as_major_minor() {
    let mut o = offer("RTX-4090");
    o.gpu.compute_capability = Some(ComputeCapability(8, 9));
    assert!(m("cc=8.9 cc>=8.9 cc>8.6 cc<9 cc<9.0 cc!=9 cc in [8.6, 8.9]", &o));
    assert!(!m("cc>=9", &o));
    o.gpu.compute_capability = Some(ComputeCapability(10, 0));
    assert!(m("cc>9.9 cc=10", &o), "10.0 is above 9.9");
    o.gpu.compute_capability = None;
    for text in ["cc>=0", "cc!=8.9", "cc notin [8.9]", "cc<99"] {
        assert!(!m(text, &o), "{text} on an unknown compute capability");
    }
}

#[test]
fn region_is_hierarchical_and_case_insensitive() {
    let o = offer("H100"); // us-east
    for yes in [
        "region=us",
        "region=US",
        "region=us-east",
        "region=US-East",
        "region~east",
        "region~S-E",
        "region!=eu",
        "region in [eu,us]",
        "region notin [us-west, eu]",
    ] {
        assert!(m(yes, &o), "{yes}");
    }
    for no in
        ["region=u", "region=us-e", "region=us-east-1", "region!=us", "region~west", "region notin [us]"]
    {
        assert!(!m(no, &o), "{no}");
    }
    let mut usa = o.clone();
    usa.host.region = "usa".into();
    assert!(!m("region=us", &usa), "`us` is not a prefix region of `usa`");
}

#[test]
fn interconnect_and_provider() {
    let o = offer("H100"); // sxm
    assert!(m("interconnect=sxm interconnect=SXM interconnect!=pcie interconnect in [nvlink,sxm]", &o));
    assert!(!m("interconnect notin [sxm]", &o));
    let id = provider().to_string();
    assert!(m(&format!("provider={id}"), &o));
    assert!(m("provider=12D3KooW", &o));
    assert!(m(&format!("provider={}", &id[..20]), &o));
    assert!(!m("provider=12d3koow", &o), "base58 is case-sensitive");
    let other = NodeId::from_bytes([8; 32]).to_string();
    assert!(m(&format!("provider!={other}"), &o));
    assert!(m(&format!("provider in [{other}, {id}]"), &o));
    assert!(!m(&format!("provider notin [{}]", &id[..30]), &o));
}

#[test]
fn whitespace_around_operators_and_word_operators() {
    let o = offer("H100-SXM");
    let spaced = q("  gpu = h100   price <= 2.5\tvram>= 80  gpu IN [ h100 , 'a100' ]  region NotIn[eu]");
    assert_eq!(spaced.terms().len(), 5);
    assert!(spaced.matches(&o, None));
    assert_eq!(spaced.to_string(), "gpu=h100 price<=2.5 vram>=80 gpu in [h100,a100] region notin [eu]");
    assert_eq!(q("gpu==h100"), q("gpu=h100"));
}

#[test]
fn empty_query_matches_everything() {
    for text in ["", "   ", "\t\n"] {
        let query = q(text);
        assert!(query.is_empty());
        assert!(query.matches(&offer("H100"), None));
        assert_eq!(query.to_string(), "");
    }
    assert_eq!(Query::default(), q(""));
}

#[test]
fn display_is_canonical() {
    let query = q("GPU == 'RTX 4090'  Price <= $2.50 gpus in 8,4 model~'a\"b\\\\c' cc>=9 ram>=0.50 cores>=8");
    assert_eq!(
        query.to_string(),
        r#"gpu="RTX 4090" price<=2.5 count in [8,4] gpu~"a\"b\\c" cc>=9.0 ram>=0.5 cpu>=8"#
    );
    assert_eq!(Query::parse(&query.to_string()), Ok(query));
}

#[test]
fn list_forms_are_equivalent() {
    let canonical = q("gpu in [h100,a100]");
    assert_eq!(q("gpu in h100,a100"), canonical);
    assert_eq!(q("gpu in [ \"h100\" , 'a100' ]"), canonical);
    assert_eq!(q("gpu in h100"), q("gpu in [h100]"));
    assert_eq!(q("gpu in 'a,b'").terms()[0].value(), &Value::List(vec![Scalar::Text("a,b".into())]));
}

#[test]
fn parse_args_joins_arguments() {
    let args: Vec<String> = ["gpu=h100", "price", "<=", "2.5"].map(String::from).to_vec();
    assert_eq!(Query::parse_args(&args), Query::parse("gpu=h100 price<=2.5"));
    assert_eq!("gpu=h100".parse::<Query>(), Query::parse("gpu=h100"));
}

#[test]
fn accessors_and_latency_use() {
    let query = q("gpu=h100 latency<20");
    assert!(query.uses_latency());
    assert!(!q("gpu=h100").uses_latency());
    let t = &query.terms()[1];
    assert_eq!((t.field(), t.op()), (Field::Latency, Op::Lt));
    assert_eq!(t.value(), &Value::One(Scalar::Decimal(Decimal::from_millionths(20_000_000))));
}

#[test]
fn query_serializes_as_its_text() {
    let query = q("gpu=h100 price<=2.5");
    let mut buf = Vec::new();
    ciborium::into_writer(&query, &mut buf).expect("writing to a Vec cannot fail");
    let text: String = ciborium::from_reader(&buf[..]).expect("a CBOR text string");
    assert_eq!(text, "gpu=h100 price<=2.5");
    let back: Query = ciborium::from_reader(&buf[..]).expect("a query");
    assert_eq!(back, query);
}

// ---- properties ----

fn scalar_strategy(field: Field) -> BoxedStrategy<Scalar> {
    match field {
        Field::Gpu => "[ -~é]{0,6}[a-zA-Z0-9][ -~é]{0,6}".prop_map(Scalar::Text).boxed(),
        Field::Region => "[A-Za-z0-9-]{1,10}".prop_map(Scalar::Text).boxed(),
        Field::Provider => "[1-9A-HJ-NP-Za-km-z]{1,52}".prop_map(Scalar::Text).boxed(),
        Field::Cc => (any::<u8>(), 0u8..=99).prop_map(|(a, b)| Scalar::Cc(ComputeCapability(a, b))).boxed(),
        Field::Interconnect => {
            proptest::sample::select(Interconnect::ALL.to_vec()).prop_map(Scalar::Interconnect).boxed()
        }
        f if f.kind() == Kind::Whole => any::<u64>().prop_map(Scalar::Whole).boxed(),
        _ => any::<u64>().prop_map(|n| Scalar::Decimal(Decimal(n))).boxed(),
    }
}

fn term_strategy() -> impl Strategy<Value = Term> {
    proptest::sample::select(Field::ALL.to_vec()).prop_flat_map(|field| {
        let op = proptest::sample::select(field.ops());
        (op, proptest::collection::vec(scalar_strategy(field), 1..4)).prop_map(move |(op, mut items)| {
            let value = if op.takes_list() { Value::List(items) } else { Value::One(items.swap_remove(0)) };
            Term { field, op, value }
        })
    })
}

/// An offer's value as an exact rational in the query's unit; `None` when unknown.
fn reference_value(field: Field, o: &Offer, latency: Option<u32>) -> Option<(u128, u128)> {
    Some(match field {
        Field::Vram => (o.gpu.vram_gib_rounded().into(), 1),
        Field::Count => (o.gpu_free.into(), 1),
        Field::Cpu => (o.host.cpu_cores.into(), 1),
        Field::Disk => (o.host.disk_gib.into(), 1),
        Field::Price => (o.price.0.into(), 1_000_000),
        Field::Ram => (o.host.ram_mib.into(), 1024),
        Field::Duration => (o.max_duration_s.into(), 3600),
        Field::Latency => (latency?.into(), 1),
        Field::Cc => o.gpu.compute_capability.map(|c| (u128::from(c.0) * 256 + u128::from(c.1), 1))?,
        _ => unreachable!("not a numeric field"),
    })
}

const FIELD_NAMES: [&str; 18] = [
    "gpu",
    "vram",
    "count",
    "price",
    "region",
    "cc",
    "interconnect",
    "provider",
    "latency",
    "cpu",
    "ram",
    "disk",
    "duration",
    "model",
    "vram_gib",
    "gpus",
    "num_gpus",
    "cores",
];

const NUMERIC: [Field; 9] = [
    Field::Vram,
    Field::Count,
    Field::Cpu,
    Field::Disk,
    Field::Price,
    Field::Ram,
    Field::Duration,
    Field::Latency,
    Field::Cc,
];

proptest! {
    #[test]
    fn display_then_parse_is_identity(terms in proptest::collection::vec(term_strategy(), 0..6)) {
        let query = Query { terms };
        let text = query.to_string();
        prop_assert_eq!(Query::parse(&text), Ok(query), "{}", text);
    }

}

proptest! {
    // Random text parses rarely; more cases give the round trip more parsed inputs.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn parsing_never_panics_and_what_parses_round_trips(text in "[ -~é\t]{0,40}") {
        if let Ok(query) = Query::parse(&text) {
            prop_assert_eq!(Query::parse(&query.to_string()), Ok(query));
        }
    }

    #[test]
    fn parsing_term_shaped_text_round_trips(
        parts in proptest::collection::vec(
            (
                prop_oneof![
                    3 => proptest::sample::select(FIELD_NAMES.to_vec()).prop_map(String::from),
                    1 => "[a-z]{2,8}",
                ],
                "(=|!=|<|<=|>|>=|~| in | notin )",
                prop_oneof![
                    "[0-9]{1,3}(\\.[0-9]{1,7})?",
                    "[a-z0-9-]{1,6}",
                    "\\[ ?[a-z0-9.]{1,4}( ?, ?[a-z0-9.]{1,4}){0,2} ?\\]",
                    "'[a-z0-9 \"]{1,6}'",
                    "[a-z0-9.,\\[\\]'\" -]{1,8}",
                ],
            ),
            1..3,
        )
    ) {
        let text: Vec<String> = parts.iter().map(|(f, o, v)| format!("{f}{o}{v}")).collect();
        let text = text.join(" ");
        if let Ok(query) = Query::parse(&text) {
            prop_assert_eq!(Query::parse(&query.to_string()), Ok(query));
        }
    }

}

proptest! {
    #[test]
    fn numeric_matching_agrees_with_reference(
        field in proptest::sample::select(NUMERIC.to_vec()),
        op in proptest::sample::select(NUMERIC_OPS.to_vec()),
        raw_values in proptest::collection::vec((0u64..40, 0u64..4), 1..4),
        vram_gib_x4 in 0u32..160,
        gpu_free in 0u32..10,
        price_quarters in 0u64..16,
        cpu in 0u32..10,
        ram_mib_x256 in 0u64..40,
        disk in 0u64..10,
        duration_quarter_h in 0u64..40,
        latency in proptest::option::of(0u32..40),
        cc in proptest::option::of((0u8..10, 0u8..10)),
    ) {
        let mut o = offer("H100");
        o.gpu.vram_mib = vram_gib_x4 * 256;
        o.gpu_free = gpu_free;
        o.price = Price(price_quarters * 250_000);
        o.host.cpu_cores = cpu;
        o.host.ram_mib = ram_mib_x256 * 256;
        o.host.disk_gib = disk;
        o.max_duration_s = duration_quarter_h * 900;
        o.gpu.compute_capability = cc.map(|(a, b)| ComputeCapability(a, b));
        // Values: an integer part and a quarter (or, for cc, a minor version).
        let (texts, refs): (Vec<String>, Vec<(u128, u128)>) = raw_values
            .iter()
            .map(|&(int, frac)| match field.kind() {
                Kind::Whole => (int.to_string(), (u128::from(int), 1)),
                Kind::Cc => {
                    let (major, minor) = (int % 12, frac);
                    (format!("{major}.{minor}"), (u128::from(major) * 256 + u128::from(minor), 1))
                }
                _ => {
                    let millionths = int * 1_000_000 / 4 + frac * 250_000 / 4;
                    let text = format!("{}.{:06}", millionths / 1_000_000, millionths % 1_000_000);
                    (text, (u128::from(millionths), 1_000_000))
                }
            })
            .unzip();
        let value =
            if op.takes_list() { format!("[{}]", texts.join(",")) } else { texts[0].clone() };
        let text = format!("{field} {op} {value}");
        let query = Query::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;

        let expected = reference_value(field, &o, latency).is_some_and(|(n, d)| {
            let cmp = |&(vn, vd): &(u128, u128)| (n * vd).cmp(&(vn * d));
            match op {
                Op::Eq => cmp(&refs[0]).is_eq(),
                Op::Ne => cmp(&refs[0]).is_ne(),
                Op::Lt => cmp(&refs[0]).is_lt(),
                Op::Le => cmp(&refs[0]).is_le(),
                Op::Gt => cmp(&refs[0]).is_gt(),
                Op::Ge => cmp(&refs[0]).is_ge(),
                Op::In => refs.iter().any(|r| cmp(r).is_eq()),
                Op::NotIn => !refs.iter().any(|r| cmp(r).is_eq()),
                Op::Contains => unreachable!("not a numeric operator"),
            }
        });
        prop_assert_eq!(query.matches(&o, latency), expected, "{} on {:?}", text, o);
    }
}

mod numeric {
    use super::super::*;
    use crate::id::{NodeId, OfferId};
    use crate::offer::PROTOCOL_VERSION;
    use crate::price::Price;
    use crate::spec::{GpuSpec, HostSpec};
    use crate::time::Timestamp;
    use proptest::prelude::*;

    fn offer(free: u32, cpu: u32, price: u64, ram: u64, disk: u64, dur: u64) -> Offer {
        let provider = NodeId::from_bytes([1; 32]);
        let gpu = GpuSpec {
            vendor: "nvidia".into(),
            model: "L40S".into(),
            vram_mib: 46068,
            compute_capability: None,
            interconnect: Interconnect::Pcie,
            cuda_version: None,
            driver_version: None,
        };
        Offer {
            v: PROTOCOL_VERSION,
            network: "n".into(),
            offer_id: OfferId::derive(&provider, &gpu.group_key()),
            provider,
            seq: 1,
            issued_at: Timestamp(0),
            expires_at: Timestamp(1),
            gpu,
            gpu_total: free.max(1),
            gpu_free: free,
            host: HostSpec { cpu_cores: cpu, ram_mib: ram, disk_gib: disk, region: "us".into() },
            price: Price(price),
            min_duration_s: 0,
            max_duration_s: dur,
            addrs: vec![],
        }
    }

    proptest! {
        /// A compiled numeric term holds exactly when the term does.
        #[test]
        fn compiled_terms_agree_with_terms(
            free in 0u32..20, cpu in 0u32..200, price in 0u64..5_000_000, ram in 0u64..2_000_000,
            disk in 0u64..10_000, dur in 0u64..1_000_000,
            field in prop::sample::select(vec!["count", "cpu", "disk", "price", "ram", "duration"]),
            op in prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">=", " in ", " notin "]),
            a in 0u64..3000, b in 0u64..3000, frac in 0u64..1000,
        ) {
            let whole = matches!(field, "count" | "cpu" | "disk");
            let num = |x: u64| if whole { x.to_string() } else { format!("{}.{frac:03}", x / 2) };
            let value = if op.trim().contains("in") { format!("[{},{}]", num(a), num(b)) } else { num(a) };
            let q = Query::parse(&format!("{field}{op}{value}")).unwrap();
            let t = &q.terms()[0];
            let o = offer(free, cpu, price, ram, disk, dur);
            let compiled = t.numeric().expect("offer-scope terms compile");
            let n = OfferNumbers::of(&o);
            prop_assert_eq!(compiled.test(&n), t.matches(&o, None));
            // As a range over the raw value, where the term is one.
            if let Some((lo, hi)) = compiled.range() {
                let raw = match field {
                    "count" => u64::from(n.gpu_free),
                    "cpu" => u64::from(n.cpu_cores),
                    "disk" => n.disk_gib,
                    "price" => n.price_micros,
                    "ram" => n.ram_mib,
                    _ => n.max_duration_s,
                };
                prop_assert_eq!(lo <= raw && raw <= hi, compiled.test(&n), "{} {:?}", raw, (lo, hi));
            } else {
                prop_assert!(matches!(op.trim(), "!=" | "in" | "notin"));
            }
        }
    }
}
