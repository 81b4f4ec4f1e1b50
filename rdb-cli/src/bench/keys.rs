//! Which key a benchmark request touches: key names, and the uniform and zipfian choosers.
//!
//! The zipfian chooser is YCSB's `ScrambledZipfianGenerator`: a zipfian rank over ten billion
//! items (constant 0.99, the algorithm of Gray et al., "Quickly Generating Billion-Record
//! Synthetic Databases", SIGMOD 1994), hashed with 64-bit FNV-1a and folded onto the key space.
//! The hash scatters the popular keys over the whole key space instead of crowding them at its
//! start, so with range-partitioned data the hot keys are not all in one range. Everything is
//! drawn from the caller's seeded generator, so a seed decides the key sequence.

use rand::Rng;

/// The name of key number `i`.
pub fn key_name(i: u64) -> String {
    format!("bench-{i:08}")
}

/// The key prefix every benchmark key shares (scans stay inside it).
pub const KEY_PREFIX: &[u8] = b"bench-";

/// How keys are picked from the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few keys take most requests (YCSB's scrambled zipfian, constant 0.99).
    Zipfian,
}

impl Distribution {
    /// The name used on the command line and in the JSON summary.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        }
    }
}

/// YCSB's zipfian constant (theta).
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// Items of the underlying zipfian (YCSB `ScrambledZipfianGenerator.ITEM_COUNT`).
const ZIPF_ITEMS: f64 = 10_000_000_000.0;

/// zeta(ZIPF_ITEMS, 0.99), precomputed by YCSB (`ScrambledZipfianGenerator.ZETAN`): summing
/// ten billion terms at start-up would take a minute.
const ZIPF_ZETAN: f64 = 26.469_028_201_783_02;

/// Zipfian key numbers in `0..items`, most popular keys scattered by a hash.
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    items: u64,
    alpha: f64,
    eta: f64,
    /// 1 + 0.5^theta: the cumulative weight of the first two ranks (zeta(2, theta)).
    zeta2: f64,
}

impl ScrambledZipfian {
    /// A generator over `0..items`; `items` must be at least 1 (0 is treated as 1).
    pub fn new(items: u64) -> ScrambledZipfian {
        let theta = ZIPFIAN_CONSTANT;
        let zeta2 = 1.0 + 0.5f64.powf(theta);
        ScrambledZipfian {
            items: items.max(1),
            alpha: 1.0 / (1.0 - theta),
            eta: (1.0 - (2.0 / ZIPF_ITEMS).powf(1.0 - theta)) / (1.0 - zeta2 / ZIPF_ZETAN),
            zeta2,
        }
    }

    /// The zipfian rank (0 most popular) of one uniform draw `u` in [0, 1).
    fn rank(&self, u: f64) -> u64 {
        let uz = u * ZIPF_ZETAN;
        if uz < 1.0 {
            0
        } else if uz < self.zeta2 {
            1
        } else {
            // A float-to-int cast saturates, so a rounding overshoot cannot wrap.
            (ZIPF_ITEMS * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
        }
    }

    /// The next key number, in `0..items`.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        scramble(self.rank(rng.gen::<f64>()), self.items)
    }
}

/// Folds a zipfian rank onto `0..items` through its hash (YCSB takes `Math.abs` of the signed
/// hash before the modulo; `unsigned_abs` matches it).
fn scramble(rank: u64, items: u64) -> u64 {
    (fnv1a64(rank) as i64).unsigned_abs() % items
}

/// 64-bit FNV-1a over the eight little-endian bytes of `v` (YCSB `Utils.fnvhash64`).
fn fnv1a64(v: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    v.to_le_bytes()
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Picks key numbers in `0..keys` by a [`Distribution`].
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Every key equally likely.
    Uniform(u64),
    /// Scrambled zipfian.
    Zipfian(ScrambledZipfian),
}

impl KeyChooser {
    /// A chooser over `0..keys` (`keys` at least 1; 0 is treated as 1).
    pub fn new(distribution: Distribution, keys: u64) -> KeyChooser {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform(keys.max(1)),
            Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(keys)),
        }
    }

    /// The next key number.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform(n) => rng.gen_range(0..*n),
            KeyChooser::Zipfian(z) => z.next(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn draws(chooser: &KeyChooser, seed: u64, n: usize) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| chooser.next(&mut rng)).collect()
    }

    /// How often each key was drawn, most frequent first.
    fn counts_desc(keys: u64, sample: &[u64]) -> Vec<u64> {
        let mut counts = vec![0u64; keys as usize];
        for &k in sample {
            counts[k as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts
    }

    #[test]
    fn keys_are_zero_padded() {
        assert_eq!(key_name(0), "bench-00000000");
        assert_eq!(key_name(42), "bench-00000042");
        assert_eq!(key_name(99_999_999), "bench-99999999");
        assert_eq!(key_name(123_456_789), "bench-123456789");
        // Padding keeps numeric and byte order the same within the documented range.
        assert!(key_name(9) < key_name(10));
        assert!(key_name(0).as_bytes().starts_with(KEY_PREFIX));
    }

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        // FNV-1a of eight zero bytes, and of 1 as eight little-endian bytes (computed byte by
        // byte from the FNV definition).
        let by_hand = |bytes: [u8; 8]| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(1_099_511_628_211);
            }
            h
        };
        assert_eq!(fnv1a64(0), by_hand([0; 8]));
        assert_eq!(fnv1a64(1), by_hand([1, 0, 0, 0, 0, 0, 0, 0]));
        assert_ne!(fnv1a64(0), fnv1a64(1));
    }

    #[test]
    fn zipfian_ranks_follow_gray_et_al() {
        let z = ScrambledZipfian::new(1000);
        // Rank 0 takes the first 1/zetan of the unit interval, rank 1 the next 0.5^0.99/zetan.
        assert_eq!(z.rank(0.0), 0);
        assert_eq!(z.rank(0.99 / ZIPF_ZETAN), 0);
        assert_eq!(z.rank(1.01 / ZIPF_ZETAN), 1);
        assert!(z.rank(0.5) > 1);
        // Ranks grow with u and stay within the item count, even at the top end.
        assert!(z.rank(0.9) >= z.rank(0.5));
        assert!((z.rank(0.999_999_999) as f64) <= ZIPF_ITEMS);
    }

    #[test]
    fn zipfian_stays_in_range() {
        for keys in [1u64, 2, 3, 10, 1000, 100_000] {
            let z = KeyChooser::new(Distribution::Zipfian, keys);
            let sample = draws(&z, 7, 20_000);
            assert!(
                sample.iter().all(|&k| k < keys),
                "a key out of 0..{keys}: {:?}",
                sample.iter().find(|&&k| k >= keys)
            );
        }
        // One key: always key 0 (and 0 keys is treated as one).
        assert!(draws(&KeyChooser::new(Distribution::Zipfian, 1), 3, 100)
            .iter()
            .all(|&k| k == 0));
        assert!(draws(&KeyChooser::new(Distribution::Zipfian, 0), 3, 100)
            .iter()
            .all(|&k| k == 0));
    }

    #[test]
    fn zipfian_is_skewed_and_uniform_is_not() {
        let keys = 1000u64;
        let n = 100_000usize;
        let fair_share = n as u64 / keys; // 100 draws per key
        let zipf = counts_desc(
            keys,
            &draws(&KeyChooser::new(Distribution::Zipfian, keys), 11, n),
        );
        // The most popular key gets about 1/zetan = 3.8% of all draws: ~38x its fair share.
        assert!(zipf[0] > 20 * fair_share, "top key drew {} of {n}", zipf[0]);
        // The ten most popular keys (1% of the key space) take well over 1% of the draws.
        let top10: u64 = zipf[..10].iter().sum();
        assert!(top10 as f64 > 0.10 * n as f64, "top 10 drew {top10} of {n}");

        let uniform = counts_desc(
            keys,
            &draws(&KeyChooser::new(Distribution::Uniform, keys), 11, n),
        );
        assert!(
            uniform[0] < 2 * fair_share,
            "uniform top key drew {}",
            uniform[0]
        );
        assert!(uniform[keys as usize - 1] > 0, "uniform missed a key");
    }

    #[test]
    fn zipfian_scatters_the_popular_keys() {
        // Without the hash the most popular keys would be 0, 1, 2, ...; scrambled, the top
        // key is elsewhere and the ten most drawn are not all at the start of the key space.
        let keys = 1000u64;
        let sample = draws(&KeyChooser::new(Distribution::Zipfian, keys), 5, 50_000);
        let mut counts = vec![0u64; keys as usize];
        for &k in &sample {
            counts[k as usize] += 1;
        }
        let mut by_count: Vec<(u64, u64)> = (0..keys).map(|k| (counts[k as usize], k)).collect();
        by_count.sort_unstable_by(|a, b| b.cmp(a));
        let top: Vec<u64> = by_count[..10].iter().map(|&(_, k)| k).collect();
        assert!(
            top.iter().any(|&k| k >= 100),
            "top keys crowd the start: {top:?}"
        );
        // The hottest key is rank 0's hash.
        assert_eq!(top[0], scramble(0, keys));
    }

    #[test]
    fn choosers_are_deterministic_for_a_seed() {
        for d in [Distribution::Uniform, Distribution::Zipfian] {
            let c = KeyChooser::new(d, 100_000);
            assert_eq!(draws(&c, 42, 1000), draws(&c, 42, 1000), "{d:?}");
            assert_ne!(draws(&c, 42, 1000), draws(&c, 43, 1000), "{d:?}");
        }
    }
}
