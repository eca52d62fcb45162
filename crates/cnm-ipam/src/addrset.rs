//! A sparse set of addresses: memory proportional to the number of allocated runs, not to the
//! size of the pool, so an IPv6 /64 costs nothing until it is used.

use std::collections::BTreeMap;

/// Members are stored as maximal runs `start → end` (inclusive) that neither overlap nor touch:
/// two adjacent runs are always merged. That invariant makes "lowest free value ≥ x" a single
/// predecessor lookup: if `x` is inside a run, `end + 1` cannot be inside another one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AddressSet {
    runs: BTreeMap<u128, u128>,
}

impl AddressSet {
    /// The run that contains `value`, if any.
    fn run_containing(&self, value: u128) -> Option<(u128, u128)> {
        let (&start, &end) = self.runs.range(..=value).next_back()?;
        (value <= end).then_some((start, end))
    }

    /// Whether `value` is a member.
    #[cfg(test)]
    pub(crate) fn contains(&self, value: u128) -> bool {
        self.run_containing(value).is_some()
    }

    /// Adds `value`; false (and no change) if it was already a member.
    pub(crate) fn insert(&mut self, value: u128) -> bool {
        self.insert_run(value, value)
    }

    /// Adds every value of `first..=last`; false (and no change) if any of them is already a
    /// member or the range is empty.
    pub(crate) fn insert_run(&mut self, first: u128, last: u128) -> bool {
        if first > last || self.run_containing(first).is_some() {
            return false;
        }
        if let Some((&next_start, _)) = self.runs.range(first..).next()
            && next_start <= last
        {
            return false;
        }
        let left = first
            .checked_sub(1)
            .and_then(|before| self.run_containing(before))
            .map(|(start, _)| start);
        let right = last
            .checked_add(1)
            .and_then(|after| self.runs.get(&after).map(|&end| (after, end)));
        let start = left.unwrap_or(first);
        let end = match right {
            Some((after, end)) => {
                self.runs.remove(&after);
                end
            }
            None => last,
        };
        self.runs.insert(start, end);
        true
    }

    /// Removes `value`; false (and no change) if it was not a member.
    pub(crate) fn remove(&mut self, value: u128) -> bool {
        let Some((start, end)) = self.run_containing(value) else {
            return false;
        };
        if start == value {
            self.runs.remove(&start);
        } else {
            // value > start, so value - 1 cannot underflow.
            self.runs.insert(start, value - 1);
        }
        if end > value {
            self.runs.insert(value + 1, end);
        }
        true
    }

    /// The lowest value of `low..=high` that is not a member, in O(log n).
    pub(crate) fn first_free(&self, low: u128, high: u128) -> Option<u128> {
        if low > high {
            return None;
        }
        match self.run_containing(low) {
            None => Some(low),
            Some((_, end)) if end >= high => None,
            // Runs never touch, so end + 1 is free.
            Some((_, end)) => Some(end + 1),
        }
    }

    /// The runs in ascending order.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.runs.iter().map(|(&start, &end)| (start, end))
    }

    /// How many runs the set is made of (its memory is proportional to this).
    pub(crate) fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// How many values are members, saturating at `u128::MAX`.
    pub(crate) fn len(&self) -> u128 {
        self.runs.iter().fold(0u128, |n, (&s, &e)| {
            n.saturating_add(e - s).saturating_add(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(set: &AddressSet) -> Vec<(u128, u128)> {
        set.runs().collect()
    }

    #[test]
    fn neighbours_merge_into_one_run() {
        let mut set = AddressSet::default();
        assert!(set.insert(5));
        assert!(set.insert(7));
        assert_eq!(runs(&set), [(5, 5), (7, 7)]);
        assert!(set.insert(6));
        assert_eq!(runs(&set), [(5, 7)]);
        assert!(!set.insert(6), "a member cannot be inserted twice");
        assert!(set.contains(6) && !set.contains(4) && !set.contains(8));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn removing_from_the_middle_splits_a_run() {
        let mut set = AddressSet::default();
        assert!(set.insert_run(10, 20));
        assert!(set.remove(15));
        assert_eq!(runs(&set), [(10, 14), (16, 20)]);
        assert!(set.remove(10));
        assert!(set.remove(20));
        assert_eq!(runs(&set), [(11, 14), (16, 19)]);
        assert!(!set.remove(15), "a non-member cannot be removed");
    }

    #[test]
    fn first_free_skips_a_run() {
        let mut set = AddressSet::default();
        assert!(set.insert_run(1, 100));
        assert_eq!(set.first_free(1, 200), Some(101));
        assert_eq!(set.first_free(0, 200), Some(0));
        assert_eq!(set.first_free(1, 100), None);
        assert_eq!(set.first_free(5, 4), None);
    }

    #[test]
    fn the_extremes_of_u128_are_usable() {
        let mut set = AddressSet::default();
        assert!(set.insert(u128::MAX));
        assert!(set.insert(0));
        assert!(set.insert(u128::MAX - 1));
        assert_eq!(runs(&set), [(0, 0), (u128::MAX - 1, u128::MAX)]);
        assert_eq!(set.first_free(u128::MAX - 1, u128::MAX), None);
        assert!(set.remove(u128::MAX));
        assert_eq!(set.first_free(u128::MAX - 1, u128::MAX), Some(u128::MAX));
    }

    #[test]
    fn overlapping_runs_are_refused() {
        let mut set = AddressSet::default();
        assert!(set.insert_run(10, 20));
        assert!(!set.insert_run(5, 10));
        assert!(!set.insert_run(20, 30));
        assert!(!set.insert_run(0, 100));
        assert!(set.insert_run(21, 30));
        assert_eq!(runs(&set), [(10, 30)]);
    }

    proptest::proptest! {
        /// The run map behaves exactly like a plain set, and its runs stay maximal.
        #[test]
        fn behaves_like_a_btreeset(ops in proptest::collection::vec((0u8..3, 0u128..64), 0..300)) {
            let mut set = AddressSet::default();
            let mut model = std::collections::BTreeSet::new();
            for (op, value) in ops {
                match op {
                    0 => proptest::prop_assert_eq!(set.insert(value), model.insert(value)),
                    1 => proptest::prop_assert_eq!(set.remove(value), model.remove(&value)),
                    _ => {
                        let expected = (value..64).find(|v| !model.contains(v));
                        proptest::prop_assert_eq!(set.first_free(value, 63), expected);
                    }
                }
                let runs = runs(&set);
                for pair in runs.windows(2) {
                    proptest::prop_assert!(pair[0].1 + 1 < pair[1].0, "runs touch: {:?}", pair);
                }
                let members: Vec<u128> = runs.iter().flat_map(|&(s, e)| s..=e).collect();
                proptest::prop_assert_eq!(members, model.iter().copied().collect::<Vec<_>>());
                proptest::prop_assert_eq!(set.len(), model.len() as u128);
            }
        }
    }
}
