//! Retention planning, kept apart from the database so it can be tested on its own: from the
//! facts about a page of rooms ([`sql::RETAIN_PLAN`](crate::sql::RETAIN_PLAN)) to the seq ranges
//! to delete, then to chunks of bounded size, each deleted in a transaction of its own.
//!
//! A room's messages are ordered by epoch (the order the epochs began) and then by seq; retention
//! deletes a prefix of that order, so what is kept of a room stays contiguous:
//!
//! * by count: the newest `max_count` are kept, counted by seq (`seq > highest - n`), newest epoch
//!   first; older epochs keep what the newer ones left of the count;
//! * by age: within each epoch, the messages from the oldest up to the first one that is not
//!   expired. A message that is expired but follows a younger one (clocks of two nodes apart)
//!   waits for that one: deleting it would leave a hole.

use std::collections::HashMap;

/// What the database says about one epoch of a room, for planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EpochFacts {
    pub room: String,
    pub epoch: String,
    /// When it began, relative to the room's other epochs (greater is newer).
    pub started: i64,
    /// The highest seq ever stored in it.
    pub seq: i64,
    /// The lowest and highest seq stored now; `None` when nothing is.
    pub min_seq: Option<i64>,
    pub max_seq: Option<i64>,
    /// The first seq, within the first window of rows, that is not expired.
    pub young: Option<i64>,
    /// When `young` is `None`: the last seq of the first window of rows, if it is full.
    pub window_end: Option<i64>,
}

/// One seq range to delete: `lo ..= hi` of (`room`, `epoch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub room: String,
    pub epoch: String,
    pub lo: i64,
    pub hi: i64,
}

/// The ranges to delete from the rooms `facts` describes, each room kept to `max_count(room)`.
/// The flag is true when some epoch had more expired rows than one window showed: the page is
/// to be planned again once these are deleted.
pub(crate) fn plan(mut facts: Vec<EpochFacts>, max_count: &HashMap<String, i64>) -> (Vec<Target>, bool) {
    facts.sort_by(|a, b| a.room.cmp(&b.room).then(b.started.cmp(&a.started)));
    let mut targets = Vec::new();
    let mut more = false;
    let mut room: Option<&str> = None;
    let mut remaining = 0i64;
    for f in &facts {
        if room != Some(f.room.as_str()) {
            room = Some(f.room.as_str());
            remaining = max_count.get(&f.room).copied().unwrap_or(i64::MAX).max(0);
        }
        let (Some(min_seq), Some(max_seq)) = (f.min_seq, f.max_seq) else { continue };
        // By count: this epoch keeps at most `remaining`, the highest seqs.
        let span = f.seq.saturating_sub(min_seq).saturating_add(1);
        let count_cut = if remaining >= span {
            remaining -= span;
            min_seq - 1
        } else {
            let cut = f.seq - remaining;
            remaining = 0;
            cut
        };
        // By age: up to the first message that is not expired.
        let age_cut = match (f.young, f.window_end) {
            (Some(young), _) => young - 1,
            // A full window of expired rows, and more beyond it.
            (None, Some(end)) if end < max_seq => {
                more = true;
                end
            }
            // Every stored row is expired.
            (None, _) => f.seq,
        };
        let cut = count_cut.max(age_cut);
        if cut >= min_seq {
            targets.push(Target { room: f.room.clone(), epoch: f.epoch.clone(), lo: min_seq, hi: cut });
        }
    }
    (targets, more)
}

/// Splits `targets` into chunks of at most `size` seqs each (so at most `size` rows), in order.
pub(crate) fn chunks(targets: &[Target], size: i64) -> Vec<Vec<Target>> {
    let size = size.max(1);
    let mut out = Vec::new();
    let mut current: Vec<Target> = Vec::new();
    let mut used = 0i64;
    for t in targets {
        let mut lo = t.lo;
        while lo <= t.hi {
            let take = (t.hi - lo).saturating_add(1).min(size - used);
            let hi = lo + take - 1;
            current.push(Target { room: t.room.clone(), epoch: t.epoch.clone(), lo, hi });
            used += take;
            lo = hi.saturating_add(1);
            if used == size {
                out.push(std::mem::take(&mut current));
                used = 0;
            }
            if hi == i64::MAX {
                break;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(room: &str, epoch: &str, started: i64, seq: i64, stored: Option<(i64, i64)>) -> EpochFacts {
        EpochFacts {
            room: room.into(),
            epoch: epoch.into(),
            started,
            seq,
            min_seq: stored.map(|s| s.0),
            max_seq: stored.map(|s| s.1),
            young: stored.map(|s| s.0),
            window_end: None,
        }
    }

    fn counts(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
        pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    }

    fn target(room: &str, epoch: &str, lo: i64, hi: i64) -> Target {
        Target { room: room.into(), epoch: epoch.into(), lo, hi }
    }

    #[test]
    fn count_keeps_the_newest_by_seq() {
        let (t, more) = plan(vec![facts("r", "e", 1, 10, Some((1, 10)))], &counts(&[("r", 3)]));
        assert_eq!(t, vec![target("r", "e", 1, 7)]);
        assert!(!more);
        let (t, _) = plan(vec![facts("r", "e", 1, 10, Some((1, 10)))], &counts(&[("r", 10)]));
        assert!(t.is_empty());
        let (t, _) = plan(vec![facts("r", "e", 1, 10, Some((4, 10)))], &counts(&[("r", 0)]));
        assert_eq!(t, vec![target("r", "e", 4, 10)]);
    }

    #[test]
    fn older_epochs_get_what_the_newer_left_of_the_count() {
        let f = vec![facts("r", "old", 1, 8, Some((1, 8))), facts("r", "new", 2, 3, Some((1, 3)))];
        let (t, _) = plan(f.clone(), &counts(&[("r", 5)]));
        assert_eq!(t, vec![target("r", "old", 1, 6)]);
        let (t, _) = plan(f, &counts(&[("r", 2)]));
        assert_eq!(t, vec![target("r", "new", 1, 1), target("r", "old", 1, 8)]);
    }

    #[test]
    fn age_deletes_up_to_the_first_young_message() {
        let mut f = facts("r", "e", 1, 10, Some((1, 10)));
        f.young = Some(6);
        assert_eq!(plan(vec![f.clone()], &counts(&[])).0, vec![target("r", "e", 1, 5)]);
        f.young = None; // all expired
        f.window_end = None; // fewer rows than a window
        assert_eq!(plan(vec![f.clone()], &counts(&[])), (vec![target("r", "e", 1, 10)], false));
        f.window_end = Some(10); // exactly a window
        assert_eq!(plan(vec![f.clone()], &counts(&[])), (vec![target("r", "e", 1, 10)], false));
        f.window_end = Some(4); // expired beyond the window: plan again
        assert_eq!(plan(vec![f], &counts(&[])), (vec![target("r", "e", 1, 4)], true));
    }

    #[test]
    fn nothing_stored_nothing_to_do() {
        assert!(plan(vec![facts("r", "e", 1, 10, None)], &counts(&[("r", 0)])).0.is_empty());
    }

    #[test]
    fn chunks_hold_at_most_size_seqs() {
        let t = vec![target("a", "e", 1, 5), target("b", "e", 3, 4), target("c", "e", 1, 1)];
        let c = chunks(&t, 3);
        assert_eq!(
            c,
            vec![
                vec![target("a", "e", 1, 3)],
                vec![target("a", "e", 4, 5), target("b", "e", 3, 3)],
                vec![target("b", "e", 4, 4), target("c", "e", 1, 1)],
            ]
        );
        assert_eq!(chunks(&t, 100).len(), 1);
        assert!(chunks(&[], 3).is_empty());
    }
}
