//! What an enumeration delivered against what the upstream counted (`@odata.count`), and what
//! follows from it: whether to read on past a silent truncation with `$skip`, and whether a
//! shortfall that remains is churn or a truncation. Pure arithmetic over counts, so it is unit- and
//! fuzz-tested alone. Every sum saturates: the count is whatever number the upstream wrote, up to
//! `u64::MAX`, and must not overflow anything (a debug build would panic).

/// Counts of one refresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Pages read, read-on and removal checks included.
    pub pages: u64,
    /// Entities received, duplicates included.
    pub delivered: u64,
    /// Distinct keys seen.
    pub distinct: u64,
    /// The latest `@odata.count` the upstream reported, if it reports one.
    pub reported: Option<u64>,
}

impl Tally {
    /// Count a page of `entities` entities that reported `count`.
    pub fn page(&mut self, entities: u64, count: Option<u64>) {
        self.pages = self.pages.saturating_add(1);
        self.delivered = self.delivered.saturating_add(entities);
        self.reported = count.or(self.reported);
    }

    /// Count a key seen for the first time in this refresh.
    pub fn sighting(&mut self) {
        self.distinct = self.distinct.saturating_add(1);
    }

    /// Counted entities not delivered (0 without a count).
    pub fn shortfall(&self) -> u64 {
        self.reported.map_or(0, |r| r.saturating_sub(self.distinct))
    }

    /// Whether the shortfall is small enough to be rows inserted while offset paging ran (up to 1%
    /// of the count), which the next refresh sees. Divides rather than multiplies, so no count can
    /// overflow it.
    pub fn tolerable(&self) -> bool {
        self.shortfall() <= self.reported.unwrap_or(0) / 100
    }
}

/// What to do after the enumeration, or after a round of reading on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every counted entity was delivered (or the upstream does not count).
    Complete,
    /// Read `$top=top` entities from `$skip=skip`.
    ReadOn {
        /// Offset into the collection.
        skip: u64,
        /// Entities to ask for.
        top: u64,
    },
    /// Reading on found nothing past what was read: the upstream holds no more rows than were
    /// delivered, so the count was taken before rows went (churn). Candidate removals are
    /// confirmed by key as always (C27), so nothing that exists is reported removed.
    Explained,
    /// The upstream keeps counting entities it does not deliver, even when asked past the ones it
    /// did: a silent truncation, which fails the refresh.
    Truncated,
}

/// Rounds in a row that deliver rows but no new key before reading on is given up: an upstream
/// that ignores `$skip` answers the same rows again forever; under churn one such round can happen
/// when inserts shift already-read rows past the offset, two hardly.
const IDLE_ROUNDS: u32 = 2;

/// The `$skip` read-on past a silent truncation. It goes on while rounds bring rows, until the
/// count is reached or a round comes back empty; the refresh's page cap and deadline bound it.
#[derive(Clone, Copy, Debug)]
pub struct ReadOn {
    /// The next `$skip`: where the pages read so far ended.
    offset: u64,
    /// `$top` per round.
    step: u64,
    /// Rounds in a row that brought no new key.
    idle: u32,
}

impl ReadOn {
    /// Start after the enumeration; `step` is the page size asked of the upstream.
    pub fn new(tally: &Tally, step: u64) -> Self {
        ReadOn {
            offset: tally.delivered,
            step: step.max(1),
            idle: 0,
        }
    }

    /// The verdict on the enumeration alone.
    pub fn first(&self, tally: &Tally) -> Verdict {
        if tally.shortfall() == 0 {
            Verdict::Complete
        } else {
            self.next_round()
        }
    }

    /// The verdict after a round that delivered `delivered` entities, `new` of them with keys not
    /// seen before (`tally` already counts them).
    pub fn after_round(&mut self, tally: &Tally, delivered: u64, new: u64) -> Verdict {
        if tally.shortfall() == 0 {
            return Verdict::Complete;
        }
        if delivered == 0 {
            return Verdict::Explained;
        }
        self.idle = if new == 0 { self.idle + 1 } else { 0 };
        if self.idle >= IDLE_ROUNDS {
            return if tally.tolerable() {
                Verdict::Explained
            } else {
                Verdict::Truncated
            };
        }
        self.offset = self.offset.saturating_add(delivered);
        self.next_round()
    }

    fn next_round(&self) -> Verdict {
        Verdict::ReadOn {
            skip: self.offset,
            top: self.step,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(delivered: u64, distinct: u64, reported: Option<u64>) -> Tally {
        Tally {
            pages: 1,
            delivered,
            distinct,
            reported,
        }
    }

    #[test]
    fn huge_counts_saturate() {
        let mut t = tally(u64::MAX - 1, 30, Some(u64::MAX));
        t.page(u64::MAX, Some(u64::MAX));
        assert_eq!(t.delivered, u64::MAX);
        assert_eq!(t.shortfall(), u64::MAX - 30);
        assert!(!t.tolerable());
        let mut r = ReadOn::new(&t, 1000);
        assert_eq!(
            r.after_round(&t, u64::MAX, 1),
            Verdict::ReadOn {
                skip: u64::MAX,
                top: 1000
            }
        );
        t.distinct = u64::MAX;
        t.sighting();
        assert_eq!(t.shortfall(), 0);
    }

    #[test]
    fn reading_on_goes_on_while_rounds_bring_new_rows() {
        // 495 counted, 50 per answer: ten rounds, not three.
        let mut t = tally(50, 50, Some(495));
        let mut r = ReadOn::new(&t, 1000);
        let mut rounds = 0;
        let mut verdict = r.first(&t);
        while let Verdict::ReadOn { skip, .. } = verdict {
            assert_eq!(skip, t.delivered);
            let n = 50.min(495 - t.distinct);
            t.page(n, Some(495));
            t.distinct += n;
            verdict = r.after_round(&t, n, n);
            rounds += 1;
        }
        assert_eq!((verdict, rounds), (Verdict::Complete, 9));
    }

    #[test]
    fn an_empty_round_explains_the_shortfall_and_repeated_rows_do_not() {
        let t = tally(118, 118, Some(120));
        let mut r = ReadOn::new(&t, 1000);
        assert_eq!(r.after_round(&t, 0, 0), Verdict::Explained);
        let t = tally(50, 50, Some(495));
        let mut r = ReadOn::new(&t, 1000);
        assert!(matches!(r.after_round(&t, 50, 0), Verdict::ReadOn { .. }));
        assert_eq!(r.after_round(&t, 50, 0), Verdict::Truncated);
        // A shortfall of at most 1% is tolerated even then.
        let t = tally(199, 199, Some(200));
        let mut r = ReadOn::new(&t, 1000);
        r.after_round(&t, 5, 0);
        assert_eq!(r.after_round(&t, 5, 0), Verdict::Explained);
    }

    #[test]
    fn no_count_or_a_low_count_is_complete() {
        let r = ReadOn::new(&tally(10, 10, None), 0);
        assert_eq!(r.first(&tally(10, 10, None)), Verdict::Complete);
        assert_eq!(r.first(&tally(10, 10, Some(0))), Verdict::Complete);
        assert!(tally(10, 10, Some(3)).tolerable());
    }
}
