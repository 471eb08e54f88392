//! A seeded simulated market: which GPUs each testnet node has, at what price, where.

use gpumesh_node::inventory::catalogue;

/// Popular models and how likely a node is to have them (weights).
const MODELS: [(&str, u32, &[u32]); 10] = [
    ("H100-SXM-80GB", 14, &[1, 2, 4, 8, 8]),
    ("H200-SXM-141GB", 5, &[4, 8, 8]),
    ("A100-SXM-80GB", 12, &[1, 2, 4, 8]),
    ("A100-PCIE-40GB", 6, &[1, 2, 4]),
    ("L40S", 10, &[1, 2, 4, 8]),
    ("RTX-4090", 18, &[1, 1, 2, 4]),
    ("RTX-3090", 12, &[1, 1, 2]),
    ("RTX-A6000", 7, &[1, 2, 4]),
    ("L4", 6, &[1, 2, 4]),
    ("T4", 6, &[1, 2, 4]),
];

const REGIONS: [&str; 7] =
    ["us-east", "us-west", "eu-west", "eu-central", "ap-northeast", "ap-south", "sa-east"];

/// A tiny deterministic generator (xorshift64*), so a seed always gives the same market.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One group of GPUs on a simulated node.
#[derive(Debug, Clone, PartialEq)]
pub struct SimGroup {
    pub model: String,
    pub count: u32,
    /// USD per GPU-hour, two decimals.
    pub price: String,
}

/// What one simulated node offers.
#[derive(Debug, Clone, PartialEq)]
pub struct SimNode {
    pub region: String,
    pub groups: Vec<SimGroup>,
}

impl SimNode {
    /// The `--simulate-gpus` spec.
    pub fn spec(&self) -> String {
        self.groups.iter().map(|g| format!("{}:{}", g.model, g.count)).collect::<Vec<_>>().join(",")
    }
}

fn pick_model(rng: &mut Rng) -> usize {
    let total: u32 = MODELS.iter().map(|m| m.1).sum();
    let mut r = rng.below(total as u64) as u32;
    for (i, m) in MODELS.iter().enumerate() {
        if r < m.1 {
            return i;
        }
        r -= m.1;
    }
    0
}

/// The market of `n` nodes for `seed`: one or two GPU groups each, prices spread around the
/// catalogue's typical price (−25 % … +35 %), regions spread over the world.
pub fn generate(n: usize, seed: u64) -> Vec<SimNode> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let groups_wanted = if rng.below(4) == 0 { 2 } else { 1 };
            let mut groups: Vec<SimGroup> = Vec::new();
            while groups.len() < groups_wanted {
                let (model, _, counts) = MODELS[pick_model(&mut rng)];
                if groups.iter().any(|g| g.model == model) {
                    continue;
                }
                let typical = catalogue::lookup(model).map_or(1_000_000, |e| e.typical_price_micros);
                let factor = 75 + rng.below(61); // percent
                let cents = (typical * factor / 100 / 10_000).max(1);
                groups.push(SimGroup {
                    model: model.to_string(),
                    count: counts[rng.below(counts.len() as u64) as usize],
                    price: format!("{}.{:02}", cents / 100, cents % 100),
                });
            }
            SimNode { region: REGIONS[rng.below(REGIONS.len() as u64) as usize].to_string(), groups }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_market_and_models_are_known() {
        let a = generate(30, 7);
        assert_eq!(a, generate(30, 7));
        assert_ne!(a, generate(30, 8));
        for node in &a {
            assert!(!node.groups.is_empty() && node.groups.len() <= 2);
            for g in &node.groups {
                assert!(catalogue::lookup(&g.model).is_some(), "{}", g.model);
                assert!(g.price.parse::<gpumesh_protocol::Price>().unwrap().0 > 0);
            }
        }
    }
}
