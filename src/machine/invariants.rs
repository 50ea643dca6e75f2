//! The machine's invariants (listed in the module docs), checked after every step in debug
//! and test builds: a violation is a bug in the machine, caught where it happens.
use super::{Machine, Phase, Role, WorkerState};

impl Machine {
    /// Panics if a documented invariant (see the module docs) does not hold.
    pub(super) fn check_invariants(&self) {
        let actives = self.generations.values().filter(|g| g.role == Role::Active).count();
        assert_eq!(actives, 1, "exactly one active generation: {:?}", self.generations.keys());
        assert!(self.generations.contains_key(&self.active));
        let candidates: Vec<u64> =
            self.generations.values().filter(|g| g.role == Role::Candidate).map(|g| g.number).collect();
        match &self.phase {
            Phase::Reloading(r) => assert_eq!(candidates, vec![r.candidate]),
            _ => assert!(candidates.is_empty(), "candidate outside a reload: {candidates:?}"),
        }
        for g in self.generations.values() {
            for (i, s) in g.slots.iter().enumerate() {
                for id in [s.current, s.successor].into_iter().flatten() {
                    let w = self.workers.get(&id);
                    assert!(w.is_some(), "slot {i} of gen {} refers to a missing worker", g.number);
                    if let Some(w) = w {
                        assert_eq!((w.generation, w.slot), (g.number, i));
                        assert!(
                            matches!(w.state, WorkerState::Booting | WorkerState::Ready),
                            "slot refers to a stopping worker"
                        );
                    }
                }
            }
        }
        for (id, w) in self.workers.iter() {
            assert!(self.generations.contains_key(&w.generation), "worker of a forgotten generation");
            // `ready_count` counts ready workers and relies on this.
            if w.state == WorkerState::Ready {
                let current = self.generations.get(&w.generation).and_then(|g| g.slots.get(w.slot)?.current);
                assert_eq!(current, Some(*id), "a ready worker is the current worker of its slot");
                assert!(!w.low_priority, "a ready worker runs at normal CPU priority");
            }
        }
        // Low priority only beside serving workers (a spawned one: see `raise_priority`).
        let low_with_pid =
            self.workers.values().any(|w| w.low_priority && w.state == WorkerState::Booting && w.pid.is_some());
        assert!(!low_with_pid || self.serving_workers() > 0, "a worker boots at low priority with nothing serving");
        // The indexes (issue 13) agree with the tables they index.
        self.workers.check_indexes();
        for g in self.generations.values() {
            g.slots.check_indexes();
        }
    }
}
