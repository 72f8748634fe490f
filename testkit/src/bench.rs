//! Helpers the custom-harness benchmarks share: a quantile of sorted samples and the facts
//! about the machine every report's header states.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// The `q` quantile (0.0 ..= 1.0) of `sorted` (ascending): the sample at index
/// `round((len - 1) * q)`, so 0.5 is the median (the upper one of an even count) and 1.0 the
/// largest. `None` when there is no sample.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let at = (last as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted.get(at.min(last)).copied()
}

/// How many CPUs' worth of time two busy threads get here (2.00 on an idle two-core machine),
/// each counting to `iterations`: other load on the machine shows up in every two-sided
/// figure, so the reports state it.
pub fn cpus_for_two(iterations: u64) -> f64 {
    let work = move || {
        let start = Instant::now();
        let mut x = 0u64;
        for i in 0..iterations {
            x = black_box(x.wrapping_add(i));
        }
        black_box(x);
        start.elapsed()
    };
    let one = work();
    let two = std::thread::scope(|s| {
        let other = s.spawn(work);
        let mine = work();
        mine.max(other.join().expect("CPU check thread panicked"))
    });
    2.0 * one.as_secs_f64() / two.as_secs_f64()
}

/// The one-minute load average from `/proc/loadavg`, or `?`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// `d` in microseconds, one decimal: `12.3 us`.
pub fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_of_a_few_samples() {
        assert_eq!(quantile::<u32>(&[], 0.5), None);
        assert_eq!(quantile(&[7], 0.0), Some(7));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        let s: Vec<u32> = (0..100).collect();
        assert_eq!(quantile(&s, 0.0), Some(0));
        assert_eq!(quantile(&s, 0.5), Some(50));
        assert_eq!(quantile(&s, 0.99), Some(98));
        assert_eq!(quantile(&s, 1.0), Some(99));
        assert_eq!(quantile(&[1, 2, 3], 0.5), Some(2));
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), Some(3));
        assert_eq!(quantile(&s, f64::NAN), Some(0));
    }

    proptest! {
        /// Always one of the samples; the median is the sample at len / 2; the quantile never
        /// decreases with q; at least a fraction q of the samples is at or below it.
        #[test]
        fn quantile_is_a_nearest_rank(
            mut v in proptest::collection::vec(any::<u32>(), 1..300),
            q in 0.0f64..=1.0,
            r in 0.0f64..=1.0,
        ) {
            v.sort_unstable();
            let got = quantile(&v, q).expect("not empty");
            prop_assert!(v.binary_search(&got).is_ok());
            prop_assert_eq!(quantile(&v, 0.5), Some(v[v.len() / 2]));
            let (lo, hi) = (q.min(r), q.max(r));
            prop_assert!(quantile(&v, lo) <= quantile(&v, hi));
            let at_or_below = v.iter().filter(|&&x| x <= got).count();
            prop_assert!(at_or_below as f64 >= q * (v.len() - 1) as f64);
        }
    }

    #[test]
    fn machine_facts() {
        let cpus = cpus_for_two(100_000);
        assert!(cpus > 0.0 && cpus.is_finite(), "{cpus}");
        let load = load_average();
        assert!(load == "?" || load.parse::<f64>().is_ok(), "{load:?}");
        assert_eq!(us(Duration::from_nanos(12_345)), "12.3 us");
    }
}
