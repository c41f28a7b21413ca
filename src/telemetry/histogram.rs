//! Cumulative histograms as Prometheus keeps them (a count per upper bound `le`), their
//! differences over a window, their sums over servers and instances, and quantiles estimated
//! from the buckets the way PromQL's `histogram_quantile` does: linear interpolation inside the
//! bucket that holds the rank. A quantile is never a mean: with no observation it is `None`.

use serde::{Deserialize, Serialize};

/// Observations counted per upper bound (cumulative), with their sum and count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    /// `(le, observations ≤ le)`, by increasing `le`; the last bound is usually `+Inf`
    /// (written `"+Inf"` in JSON, which has no infinity).
    #[serde(with = "bounds")]
    pub counts: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Buckets {
    /// From `(le, cumulative count)` pairs in any order (NaN bounds are dropped).
    pub fn new(mut counts: Vec<(f64, f64)>, sum: f64, count: f64) -> Self {
        counts.retain(|(le, c)| !le.is_nan() && c.is_finite());
        counts.sort_by(|a, b| a.0.total_cmp(&b.0));
        counts.dedup_by(|later, first| {
            // Two series with the same bound (e.g. summed label sets) add up.
            if later.0 == first.0 {
                first.1 += later.1;
                true
            } else {
                false
            }
        });
        Self { counts, sum, count }
    }

    /// Observations in the histogram (the `+Inf` bucket, else `count`).
    pub fn total(&self) -> f64 {
        match self.counts.last() {
            Some((le, c)) if le.is_infinite() => *c,
            _ => self.count,
        }
    }

    /// Cumulative count at `le` (the highest bound not above it; 0 below the first).
    fn at(&self, le: f64) -> f64 {
        match self.counts.partition_point(|(b, _)| *b <= le) {
            0 => 0.0,
            i => self.counts[i - 1].1,
        }
    }

    /// This histogram plus `other`, over the union of their bounds (a bound only one of them
    /// has counts the other's observations at its highest bound below: never more than it had).
    pub fn add(&self, other: &Buckets) -> Buckets {
        let mut bounds: Vec<f64> = self
            .counts
            .iter()
            .chain(&other.counts)
            .map(|(le, _)| *le)
            .collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        Buckets {
            counts: bounds
                .into_iter()
                .map(|le| (le, self.at(le) + other.at(le)))
                .collect(),
            sum: self.sum + other.sum,
            count: self.count + other.count,
        }
    }

    /// The observations made since `earlier` (a counter reset, i.e. a restarted server, makes
    /// this histogram the whole difference, as Prometheus' `rate` treats a reset).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        let reset =
            self.count < earlier.count || self.counts.iter().any(|(le, c)| *c < earlier.at(*le));
        if reset {
            return self.clone();
        }
        Buckets {
            counts: self
                .counts
                .iter()
                .map(|(le, c)| (*le, c - earlier.at(*le)))
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The `q` quantile (0 ≤ q ≤ 1) estimated from the buckets, or `None` without observations.
    /// A rank in the `+Inf` bucket answers the highest finite bound (what is known of it).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total.is_nan() || total <= 0.0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(le, c) in &self.counts {
            // Cumulative counts never fall (a scrape taken mid-update may disagree).
            let c = c.max(below);
            if c >= rank && c > below {
                if le.is_infinite() {
                    return Some(lower);
                }
                let start = if lower == 0.0 && le < 0.0 { le } else { lower };
                return Some(start + (le - start) * (rank - below) / (c - below));
            }
            lower = le;
            below = c;
        }
        // Every observation is above the last finite bound and no +Inf bucket was given.
        self.counts.last().map(|(le, _)| *le)
    }
}

/// Bounds in JSON: numbers, and `"+Inf"` for the infinite one.
mod bounds {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Bound {
        Finite(f64),
        Named(String),
    }

    pub fn serialize<S: Serializer>(counts: &[(f64, f64)], s: S) -> Result<S::Ok, S::Error> {
        counts
            .iter()
            .map(|&(le, c)| {
                let le = if le.is_finite() {
                    Bound::Finite(le)
                } else {
                    Bound::Named(if le > 0.0 { "+Inf" } else { "-Inf" }.into())
                };
                (le, c)
            })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, f64)>, D::Error> {
        Vec::<(Bound, f64)>::deserialize(d)?
            .into_iter()
            .map(|(le, c)| match le {
                Bound::Finite(v) => Ok((v, c)),
                Bound::Named(n) => n
                    .parse::<f64>()
                    .map(|v| (v, c))
                    .map_err(|_| serde::de::Error::custom(format!("bad bound {n:?}"))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(counts: &[(f64, f64)]) -> Buckets {
        let total = counts.last().map_or(0.0, |c| c.1);
        Buckets::new(counts.to_vec(), 0.0, total)
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_histogram_quantile() {
        // 10 observations ≤ 0.1, 10 more ≤ 0.2, none above.
        let b = h(&[(0.1, 10.0), (0.2, 20.0), (f64::INFINITY, 20.0)]);
        assert_eq!(b.quantile(0.5), Some(0.1));
        assert!((b.quantile(0.75).unwrap() - 0.15).abs() < 1e-12);
        assert!((b.quantile(0.25).unwrap() - 0.05).abs() < 1e-12);
        // The rank in +Inf: the highest finite bound.
        let tail = h(&[(0.1, 1.0), (f64::INFINITY, 10.0)]);
        assert_eq!(tail.quantile(0.95), Some(0.1));
        assert_eq!(h(&[(0.1, 0.0), (f64::INFINITY, 0.0)]).quantile(0.5), None);
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn a_p50_is_not_the_mean() {
        // 9 fast requests and one very slow one: the mean is 1.09 s, the median under 0.1 s.
        let b = Buckets::new(
            vec![(0.1, 9.0), (10.0, 9.0), (20.0, 10.0), (f64::INFINITY, 10.0)],
            10.9,
            10.0,
        );
        let p50 = b.quantile(0.5).unwrap();
        assert!(p50 < 0.1, "{p50}");
        assert!((b.sum / b.count - 1.09).abs() < 1e-9);
    }

    #[test]
    fn windows_subtract_and_servers_add() {
        let before = h(&[(0.1, 5.0), (1.0, 8.0), (f64::INFINITY, 8.0)]);
        let after = h(&[(0.1, 5.0), (1.0, 18.0), (f64::INFINITY, 18.0)]);
        let window = after.since(&before);
        assert_eq!(
            window.counts,
            vec![(0.1, 0.0), (1.0, 10.0), (f64::INFINITY, 10.0)]
        );
        assert_eq!(window.count, 10.0);
        // A restarted server: its new counts are the whole window.
        let restarted = h(&[(0.1, 1.0), (1.0, 1.0), (f64::INFINITY, 1.0)]);
        assert_eq!(restarted.since(&after), restarted);
        // Different bounds add at the union, each counting what it knows at each bound.
        let other = h(&[(0.5, 4.0), (f64::INFINITY, 4.0)]);
        let sum = window.add(&other);
        assert_eq!(
            sum.counts,
            vec![(0.1, 0.0), (0.5, 4.0), (1.0, 14.0), (f64::INFINITY, 14.0)]
        );
        assert_eq!(sum.count, 14.0);
    }

    #[test]
    fn the_infinite_bound_survives_json() {
        let b = h(&[(0.1, 1.0), (f64::INFINITY, 2.0)]);
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.contains("\"+Inf\""), "{text}");
        assert_eq!(serde_json::from_str::<Buckets>(&text).unwrap(), b);
    }

    #[test]
    fn same_bounds_from_two_label_sets_add_up() {
        let b = Buckets::new(
            vec![
                (1.0, 2.0),
                (f64::INFINITY, 3.0),
                (1.0, 5.0),
                (f64::INFINITY, 7.0),
            ],
            0.0,
            10.0,
        );
        assert_eq!(b.counts, vec![(1.0, 7.0), (f64::INFINITY, 10.0)]);
    }
}
