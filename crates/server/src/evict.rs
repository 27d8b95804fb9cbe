//! Making room in a full in-memory cache (sessions, verified tokens): the
//! entries that end soonest go first, as they would be the first to expire
//! anyway.

use std::collections::HashMap;

/// Cuts `map` down to at most `keep` entries, dropping those whose `end`
/// comes soonest (they would be the first to go anyway).
pub fn evict_soonest<K: Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    keep: usize,
    end: impl Fn(&V) -> i64,
) {
    if map.len() <= keep {
        return;
    }
    let mut ends: Vec<i64> = map.values().map(&end).collect();
    let cut = ends.len() - keep;
    let (_, &mut threshold, _) = ends.select_nth_unstable(cut - 1);
    // Everything ending before the threshold goes; of those ending at it,
    // only as many as needed.
    let mut at_threshold = cut - ends[..cut - 1].iter().filter(|&&e| e < threshold).count();
    map.retain(|_, v| {
        let e = end(v);
        if e < threshold {
            false
        } else if e == threshold && at_threshold > 0 {
            at_threshold -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_keeps_exactly_the_latest_ends() {
        let mut map: HashMap<u32, i64> = (0..10).map(|i| (i, i64::from(i % 3))).collect();
        evict_soonest(&mut map, 4, |v| *v);
        assert_eq!(map.len(), 4);
        let mut ends: Vec<i64> = map.values().copied().collect();
        ends.sort_unstable();
        assert_eq!(ends, [1, 2, 2, 2]);
        evict_soonest(&mut map, 10, |v| *v);
        assert_eq!(map.len(), 4);
        evict_soonest(&mut map, 0, |v| *v);
        assert!(map.is_empty());
    }
}
