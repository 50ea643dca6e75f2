//! Indexes kept beside the machine's tables, so that no event costs a pass over every
//! worker or every slot (issue 13: with thousands of workers such passes made a reload
//! quadratic).
//!
//! - [`Workers`] is the worker table (a `BTreeMap` by id, as before) plus: pid → worker,
//!   per-generation counts of booting / ready / draining workers, and the workers ordered by
//!   their next deadline. Mutable access goes through [`WorkerMut`], a guard that re-indexes
//!   the worker when it is dropped, so handlers keep writing `w.state = …` and the indexes
//!   cannot fall behind.
//! - [`Slots`] is a generation's slot vector plus: how many are wanted, which wanted slots
//!   have no worker (vacant), and the backoff deadlines of those. Mutable access goes
//!   through [`SlotMut`] in the same way.
//!
//! The invariant checks (debug and test builds) recompute every index from the tables and
//! compare.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Deref, DerefMut};
use std::time::Instant;

use super::{Pid, Slot, Worker, WorkerId, WorkerState};

/// Workers of one generation by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct StateCounts {
    /// `Booting`.
    pub booting: usize,
    /// `Ready` (each is the `current` of its slot).
    pub ready: usize,
    /// `Stopping` or `Killed`.
    pub draining: usize,
    /// `Ready` and healthy (`reload.min_healthy_time` passed): a subset of `ready`.
    pub healthy: usize,
    /// `Booting` at the low boot priority: a subset of `booting`.
    pub low_booting: usize,
}

impl StateCounts {
    fn slot(&mut self, state: WorkerState) -> &mut usize {
        match state {
            WorkerState::Booting => &mut self.booting,
            WorkerState::Ready => &mut self.ready,
            WorkerState::Stopping { .. } | WorkerState::Killed => &mut self.draining,
        }
    }

    fn is_empty(&self) -> bool {
        *self == StateCounts::default()
    }
}

/// What a worker was indexed under (compared with its fields when a guard drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Indexed {
    generation: u64,
    state: WorkerState,
    pid: Option<Pid>,
    deadline: Option<Instant>,
    healthy: bool,
    low_booting: bool,
}

/// The worker table and its indexes. See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Workers {
    map: BTreeMap<WorkerId, (Worker, Indexed)>,
    indexes: WorkerIndexes,
}

#[derive(Debug, Default)]
struct WorkerIndexes {
    by_pid: HashMap<Pid, WorkerId>,
    counts: BTreeMap<u64, StateCounts>,
    deadlines: BTreeSet<(Instant, WorkerId)>,
}

impl WorkerIndexes {
    fn add(&mut self, id: WorkerId, ix: &Indexed) {
        if let Some(pid) = ix.pid {
            self.by_pid.insert(pid, id);
        }
        let counts = self.counts.entry(ix.generation).or_default();
        *counts.slot(ix.state) += 1;
        if ix.healthy {
            counts.healthy += 1;
        }
        if ix.low_booting {
            counts.low_booting += 1;
        }
        if let Some(t) = ix.deadline {
            self.deadlines.insert((t, id));
        }
    }

    fn drop_entry(&mut self, id: WorkerId, ix: &Indexed) {
        if let Some(pid) = ix.pid {
            if self.by_pid.get(&pid) == Some(&id) {
                self.by_pid.remove(&pid);
            }
        }
        if let Some(c) = self.counts.get_mut(&ix.generation) {
            let n = c.slot(ix.state);
            *n = n.saturating_sub(1);
            if ix.healthy {
                c.healthy = c.healthy.saturating_sub(1);
            }
            if ix.low_booting {
                c.low_booting = c.low_booting.saturating_sub(1);
            }
            if c.is_empty() {
                self.counts.remove(&ix.generation);
            }
        }
        if let Some(t) = ix.deadline {
            self.deadlines.remove(&(t, id));
        }
    }

    fn update(&mut self, id: WorkerId, w: &Worker, ix: &mut Indexed) {
        let new = indexed(w);
        if new != *ix {
            self.drop_entry(id, ix);
            self.add(id, &new);
            *ix = new;
        }
    }
}

fn indexed(w: &Worker) -> Indexed {
    Indexed {
        generation: w.generation,
        state: w.state,
        pid: w.pid,
        deadline: w.deadline(),
        healthy: w.state == WorkerState::Ready && w.healthy,
        low_booting: w.state == WorkerState::Booting && w.low_priority,
    }
}

/// Mutable access to one worker; re-indexes it when dropped.
pub(super) struct WorkerMut<'a> {
    id: WorkerId,
    worker: &'a mut Worker,
    indexed: &'a mut Indexed,
    indexes: &'a mut WorkerIndexes,
}

impl Deref for WorkerMut<'_> {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        self.worker
    }
}

impl DerefMut for WorkerMut<'_> {
    fn deref_mut(&mut self) -> &mut Worker {
        self.worker
    }
}

impl Drop for WorkerMut<'_> {
    fn drop(&mut self) {
        self.indexes.update(self.id, self.worker, self.indexed);
    }
}

impl Workers {
    /// The worker `id`.
    pub fn get(&self, id: &WorkerId) -> Option<&Worker> {
        self.map.get(id).map(|(w, _)| w)
    }

    /// The worker `id`, for changing it (re-indexed when the guard drops).
    pub fn get_mut(&mut self, id: &WorkerId) -> Option<WorkerMut<'_>> {
        let (worker, indexed) = self.map.get_mut(id)?;
        Some(WorkerMut { id: *id, worker, indexed, indexes: &mut self.indexes })
    }

    /// Adds a worker.
    pub fn insert(&mut self, id: WorkerId, w: Worker) {
        self.remove(&id);
        let ix = indexed(&w);
        self.indexes.add(id, &ix);
        self.map.insert(id, (w, ix));
    }

    /// Removes a worker.
    pub fn remove(&mut self, id: &WorkerId) -> Option<Worker> {
        let (w, ix) = self.map.remove(id)?;
        self.indexes.drop_entry(*id, &ix);
        Some(w)
    }

    /// Every worker, by id.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&WorkerId, &Worker)> {
        self.map.iter().map(|(id, (w, _))| (id, w))
    }

    /// Every worker, by id.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Worker> {
        self.map.values().map(|(w, _)| w)
    }

    /// Every worker id, ascending.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &WorkerId> {
        self.map.keys()
    }

    /// No worker left.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The worker whose pid is `pid`.
    pub fn by_pid(&self, pid: Pid) -> Option<WorkerId> {
        self.indexes.by_pid.get(&pid).copied()
    }

    /// The workers of `generation` by state.
    pub fn counts(&self, generation: u64) -> StateCounts {
        self.indexes.counts.get(&generation).copied().unwrap_or_default()
    }

    /// Whether some worker belongs to `generation`.
    pub fn has_generation(&self, generation: u64) -> bool {
        self.indexes.counts.contains_key(&generation)
    }

    /// The earliest worker deadline later than `after`.
    pub fn next_deadline_after(&self, after: Instant) -> Option<Instant> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.indexes.deadlines.range((Excluded((after, WorkerId(u64::MAX))), Unbounded)).next().map(|&(t, _)| t)
    }

    /// Workers whose deadline is at or before `now`, in id order.
    pub fn due(&self, now: Instant) -> Vec<WorkerId> {
        let mut ids: Vec<WorkerId> =
            self.indexes.deadlines.range(..=(now, WorkerId(u64::MAX))).map(|&(_, id)| id).collect();
        ids.sort_unstable();
        ids
    }

    /// Recomputes every index from the table and compares (for the invariant checks).
    #[cfg(any(debug_assertions, test))]
    pub fn check_indexes(&self) {
        let mut fresh = WorkerIndexes::default();
        for (id, (w, ix)) in &self.map {
            assert_eq!(*ix, indexed(w), "worker {id:?} changed without being re-indexed");
            fresh.add(*id, ix);
        }
        assert_eq!(fresh.by_pid, self.indexes.by_pid, "pid index");
        assert_eq!(fresh.counts, self.indexes.counts, "per-generation counts");
        assert_eq!(fresh.deadlines, self.indexes.deadlines, "deadline index");
    }
}

/// A generation's slots and their indexes. Reads see a plain slice.
#[derive(Debug, Clone, Default)]
pub(super) struct Slots {
    slots: Vec<Slot>,
    /// How many are wanted.
    wanted: usize,
    /// Wanted slots without a current worker (the ones `spawn_missing` fills).
    vacant: BTreeSet<usize>,
    /// Backoff deadlines of vacant slots.
    backoff: BTreeSet<(Instant, usize)>,
}

/// What a slot is indexed under.
fn slot_key(s: &Slot) -> (bool, bool, Option<Instant>) {
    let vacant = s.wanted && s.current.is_none();
    (s.wanted, vacant, if vacant { s.not_before } else { None })
}

impl Slots {
    /// `count` wanted, empty slots.
    pub fn wanted(count: usize) -> Slots {
        let mut s = Slots::default();
        s.resize(count);
        s
    }

    fn unindex(&mut self, i: usize) {
        let (wanted, vacant, backoff) = slot_key(&self.slots[i]);
        self.wanted -= usize::from(wanted);
        if vacant {
            self.vacant.remove(&i);
        }
        if let Some(t) = backoff {
            self.backoff.remove(&(t, i));
        }
    }

    fn index(&mut self, i: usize) {
        let (wanted, vacant, backoff) = slot_key(&self.slots[i]);
        self.wanted += usize::from(wanted);
        if vacant {
            self.vacant.insert(i);
        }
        if let Some(t) = backoff {
            self.backoff.insert((t, i));
        }
    }

    /// Slot `i`, for changing it (re-indexed when the guard drops).
    pub fn get_mut(&mut self, i: usize) -> Option<SlotMut<'_>> {
        if i >= self.slots.len() {
            return None;
        }
        let before = slot_key(&self.slots[i]);
        Some(SlotMut { slots: self, i, before })
    }

    /// Sets `wanted` on every slot.
    pub fn set_all_wanted(&mut self, wanted: bool) {
        for i in 0..self.slots.len() {
            if let Some(mut s) = self.get_mut(i) {
                s.wanted = wanted;
            }
        }
    }

    /// Sets `wanted` to false on every slot without a current worker.
    pub fn unwant_vacant(&mut self) {
        let vacant: Vec<usize> = self.vacant.iter().copied().collect();
        for i in vacant {
            if let Some(mut s) = self.get_mut(i) {
                s.wanted = false;
            }
        }
    }

    /// Grows (new slots wanted) or shrinks to `count` slots.
    pub fn resize(&mut self, count: usize) {
        while self.slots.len() > count {
            let i = self.slots.len() - 1;
            self.unindex(i);
            self.slots.pop();
        }
        while self.slots.len() < count {
            self.slots.push(Slot { wanted: true, ..Slot::default() });
            self.index(self.slots.len() - 1);
        }
    }

    /// How many slots are wanted.
    pub fn wanted_count(&self) -> usize {
        self.wanted
    }

    /// Wanted slots without a worker, ascending.
    pub fn vacant(&self) -> impl Iterator<Item = usize> + '_ {
        self.vacant.iter().copied()
    }

    /// The earliest backoff deadline of a vacant slot later than `after`.
    pub fn next_backoff_after(&self, after: Instant) -> Option<Instant> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.backoff.range((Excluded((after, usize::MAX)), Unbounded)).next().map(|&(t, _)| t)
    }

    /// Recomputes the indexes and compares (for the invariant checks).
    #[cfg(any(debug_assertions, test))]
    pub fn check_indexes(&self) {
        let mut fresh = Slots { slots: self.slots.clone(), ..Slots::default() };
        for i in 0..fresh.slots.len() {
            fresh.index(i);
        }
        assert_eq!(fresh.wanted, self.wanted, "wanted count");
        assert_eq!(fresh.vacant, self.vacant, "vacant slots");
        assert_eq!(fresh.backoff, self.backoff, "backoff index");
    }
}

impl Deref for Slots {
    type Target = [Slot];
    fn deref(&self) -> &[Slot] {
        &self.slots
    }
}

/// Mutable access to one slot; re-indexes it when dropped.
pub(super) struct SlotMut<'a> {
    slots: &'a mut Slots,
    i: usize,
    before: (bool, bool, Option<Instant>),
}

impl Deref for SlotMut<'_> {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.slots.slots[self.i]
    }
}

impl DerefMut for SlotMut<'_> {
    fn deref_mut(&mut self) -> &mut Slot {
        &mut self.slots.slots[self.i]
    }
}

impl Drop for SlotMut<'_> {
    fn drop(&mut self) {
        let after = slot_key(&self.slots.slots[self.i]);
        if after != self.before {
            // Undo the old key, then index the new one.
            let (wanted, vacant, backoff) = self.before;
            self.slots.wanted -= usize::from(wanted);
            if vacant {
                self.slots.vacant.remove(&self.i);
            }
            if let Some(t) = backoff {
                self.slots.backoff.remove(&(t, self.i));
            }
            self.slots.index(self.i);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::config::{Config, Strategy};
    use crate::machine::{Effect, Event, Machine, Pid, WorkerMessage};

    fn config(count: usize) -> Config {
        let mut c = crate::supervisor::tests::config(count, Strategy::AllAtOnce, 1);
        c.workers.max_memory = Some(1 << 30);
        c
    }

    /// Drives a start and one all-at-once reload of `n` workers through the machine the way
    /// the executor does (after every event: the STATUS= line, the next deadline, whether
    /// memory is watched); returns (events, time spent).
    fn start_and_reload(n: usize) -> (usize, Duration) {
        let mut events = 0;
        let mut spent = Duration::ZERO;
        let now = Instant::now();
        let (mut m, fx) = Machine::start(Arc::new(config(n)), now);
        m.invariant_checks = false;
        let mut next_pid: Pid = 100;
        let mut pending: Vec<Event> = Vec::new();
        let mut queue_spawns = |fx: Vec<Effect>, pending: &mut Vec<Event>| {
            for e in fx {
                if let Effect::Spawn(req) = e {
                    pending.push(Event::Spawned { worker: req.worker, pid: next_pid });
                    next_pid += 1;
                }
            }
        };
        queue_spawns(fx, &mut pending);
        let mut feed = |m: &mut Machine, ev: Event, pending: &mut Vec<Event>, spent: &mut Duration| {
            let t = Instant::now();
            let fx = m.step(ev, now);
            std::hint::black_box(m.status_line());
            std::hint::black_box(m.next_deadline());
            std::hint::black_box(m.watches_memory());
            *spent += t.elapsed();
            queue_spawns(fx, pending);
        };
        for generation in [1u64, 2] {
            let first = next_pid_of(&pending);
            while let Some(ev) = pending.pop() {
                feed(&mut m, ev, &mut pending, &mut spent);
                events += 1;
            }
            for pid in first..first + n as Pid {
                let ready = Event::Message { sender: pid, sender_pgid: None, message: WorkerMessage::Ready };
                feed(&mut m, ready, &mut pending, &mut spent);
                events += 1;
            }
            if generation == 1 {
                let reload = Event::ReloadRequested { config: Ok(Arc::new(config(n))), requester: Some(1) };
                feed(&mut m, reload, &mut pending, &mut spent);
                events += 1;
            } else {
                for pid in first - n as Pid..first {
                    feed(&mut m, Event::Exited { pid, status: "exit code 0".into() }, &mut pending, &mut spent);
                    events += 1;
                }
            }
        }
        assert_eq!(m.status_line(), "gen 2: {n}/{n} ready".replace("{n}", &n.to_string()), "the reload completed");
        (events, spent)
    }

    fn next_pid_of(pending: &[Event]) -> Pid {
        pending
            .iter()
            .filter_map(|e| if let Event::Spawned { pid, .. } = e { Some(*pid) } else { None })
            .min()
            .unwrap_or(0)
    }

    /// Per-event cost at 4,096 workers against 64 (issue 13): with a pass over every worker
    /// per event it grew with the worker count (a ratio of about 60 and more); with the
    /// indexes it stays within a small factor (logarithmic lookups, caches).
    #[test]
    fn per_event_cost_hardly_grows_with_the_worker_count() {
        let per_event = |n: usize, rounds: usize| {
            // Best of three, each over `rounds` runs so that both sizes take similar time.
            (0..3)
                .map(|_| {
                    let (mut events, mut spent) = (0, Duration::ZERO);
                    for _ in 0..rounds {
                        let (e, s) = start_and_reload(n);
                        events += e;
                        spent += s;
                    }
                    spent.as_secs_f64() / events as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        let small = per_event(64, 64);
        let large = per_event(4096, 1);
        let ratio = large / small;
        println!(
            "numbers: machine per-event cost: 64 workers {:.2} us, 4096 workers {:.2} us, ratio {ratio:.2}",
            small * 1e6,
            large * 1e6
        );
        assert!(ratio < 8.0, "per-event cost grew {ratio:.1}x from 64 to 4096 workers");
    }
}
