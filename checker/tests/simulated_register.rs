//! A correct in-memory store driven by concurrent simulated clients must pass the checker; the
//! same history with a deliberately broken read path (stale reads) must not.

use std::collections::HashMap;

use shardkv_checker::{check, CheckError, Event, History, Op, Outcome};

/// xorshift64*: deterministic, seedable, good enough to shuffle a simulation.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Shape of one simulated run.
struct Workload {
    seed: u64,
    clients: usize,
    ops_per_client: usize,
    keys: usize,
    /// Percent of operations whose client times out and never learns the outcome.
    lost_percent: u64,
}

/// Where one client's current operation is.
enum Phase {
    Idle,
    /// Sent, not yet executed by the store.
    Sent {
        event: usize,
        lost: bool,
    },
    /// Executed; the reply is on its way.
    Replied {
        event: usize,
        outcome: Outcome,
    },
}

/// Runs clients against one correct register per key. Every operation is invoked, executed
/// atomically, and replied to at three distinct, random, interleaved instants; values are unique
/// so every read names the write it saw. Lost operations are executed now, later (a delayed
/// network) or never, and their client moves on without a reply.
fn simulate(workload: &Workload) -> Vec<Event> {
    let mut rng = Rng::new(workload.seed);
    let mut store: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut events: Vec<Event> = Vec::new();
    let mut phases: Vec<Phase> = (0..workload.clients).map(|_| Phase::Idle).collect();
    let mut issued = vec![0usize; workload.clients];
    let mut last_seen: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut delayed: Vec<usize> = Vec::new();
    let mut time = 0u64;
    let mut value_next = 0u64;
    loop {
        let busy: Vec<usize> = (0..workload.clients)
            .filter(|&c| issued[c] < workload.ops_per_client || !matches!(phases[c], Phase::Idle))
            .collect();
        if busy.is_empty() {
            break;
        }
        time += 1 + rng.below(10);
        if !delayed.is_empty() && rng.chance(10) {
            let event = delayed.swap_remove(rng.below(delayed.len() as u64) as usize);
            execute(&mut store, &events[event]);
        }
        let client = busy[rng.below(busy.len() as u64) as usize];
        phases[client] = match std::mem::replace(&mut phases[client], Phase::Idle) {
            Phase::Idle => {
                issued[client] += 1;
                let key = vec![b'k', b'0' + rng.below(workload.keys as u64) as u8];
                value_next += 1;
                let fresh = format!("v{value_next}").into_bytes();
                let op = match rng.below(10) {
                    0..=3 => Op::Get,
                    4..=6 => Op::Put(fresh),
                    7 => Op::Delete,
                    _ => Op::Cas {
                        expected: if rng.chance(70) {
                            last_seen.get(&key).cloned().flatten()
                        } else {
                            None
                        },
                        new: (!rng.chance(10)).then_some(fresh),
                    },
                };
                events.push(Event {
                    client,
                    key,
                    op,
                    invoke: time,
                    complete: None,
                    outcome: Outcome::Unknown,
                });
                Phase::Sent {
                    event: events.len() - 1,
                    lost: rng.chance(workload.lost_percent),
                }
            }
            Phase::Sent { event, lost: true } => {
                match rng.below(3) {
                    0 => {
                        execute(&mut store, &events[event]);
                    }
                    1 => delayed.push(event),
                    _ => {}
                }
                Phase::Idle
            }
            Phase::Sent { event, lost: false } => {
                let outcome = execute(&mut store, &events[event]);
                if let Outcome::Read(seen) | Outcome::CasFailed(seen) = &outcome {
                    last_seen.insert(events[event].key.clone(), seen.clone());
                }
                Phase::Replied { event, outcome }
            }
            Phase::Replied { event, outcome } => {
                events[event].complete = Some(time);
                events[event].outcome = outcome;
                Phase::Idle
            }
        };
    }
    events
}

/// Executes one operation atomically on the correct store and returns its reply.
fn execute(store: &mut HashMap<Vec<u8>, Vec<u8>>, event: &Event) -> Outcome {
    let current = store.get(&event.key).cloned();
    match &event.op {
        Op::Get => Outcome::Read(current),
        Op::Put(value) => {
            store.insert(event.key.clone(), value.clone());
            Outcome::Written
        }
        Op::Delete => {
            store.remove(&event.key);
            Outcome::Written
        }
        Op::Cas { expected, new } if *expected == current => {
            match new {
                Some(value) => store.insert(event.key.clone(), value.clone()),
                None => store.remove(&event.key),
            };
            Outcome::CasOk
        }
        Op::Cas { .. } => Outcome::CasFailed(current),
    }
}

/// A write that certainly took effect within its interval.
fn acknowledged_write(event: &Event) -> bool {
    matches!(
        (&event.op, &event.outcome),
        (Op::Put(_) | Op::Delete, Outcome::Written) | (Op::Cas { .. }, Outcome::CasOk)
    )
}

/// Breaks the read path of `count` reads: each returns the value of an acknowledged Put `w0`
/// although another acknowledged write `w` on the key started after `w0` completed and
/// completed before the read started. Values are unique, so no linearization can explain it.
/// Returns the indices of the corrupted reads.
fn corrupt_reads(events: &mut [Event], rng: &mut Rng, count: usize) -> Vec<usize> {
    let mut candidates = Vec::new();
    for (r, read) in events.iter().enumerate() {
        let Outcome::Read(_) = read.outcome else {
            continue;
        };
        let same_key = |e: &&Event| e.key == read.key && acknowledged_write(e);
        let stale = events.iter().filter(same_key).find_map(|w0| {
            let Op::Put(value) = &w0.op else { return None };
            let w0_done = w0.complete?;
            events
                .iter()
                .filter(same_key)
                .any(|w| w.invoke > w0_done && w.complete.is_some_and(|c| c < read.invoke))
                .then(|| value.clone())
        });
        if let Some(stale) = stale {
            candidates.push((r, stale));
        }
    }
    assert!(candidates.len() >= count, "workload too small to corrupt");
    let mut corrupted = Vec::new();
    for _ in 0..count {
        let (r, stale) = candidates.swap_remove(rng.below(candidates.len() as u64) as usize);
        events[r].outcome = Outcome::Read(Some(stale));
        corrupted.push(r);
    }
    corrupted
}

fn workload(seed: u64) -> Workload {
    Workload {
        seed,
        clients: 5,
        ops_per_client: 120,
        keys: 3,
        lost_percent: 2,
    }
}

#[test]
fn correct_register_histories_are_linearizable() {
    for seed in 1..=20 {
        let events = simulate(&workload(seed));
        let result = check(&History::from_events(events));
        assert!(result.is_ok(), "seed {seed}: {}", result.unwrap_err());
    }
}

#[test]
fn stale_reads_from_a_broken_read_path_are_caught() {
    for seed in 1..=20 {
        let mut events = simulate(&workload(seed));
        let mut rng = Rng::new(seed ^ 0xDEAD);
        let count = 1 + (seed % 3) as usize;
        let corrupted = corrupt_reads(&mut events, &mut rng, count);
        let bad: Vec<Event> = corrupted.iter().map(|&r| events[r].clone()).collect();
        match check(&History::from_events(events)) {
            Err(CheckError::NotLinearizable(violation)) => {
                // The core is sound, so it must contain one of the reads that were broken.
                assert!(
                    violation.events.iter().any(|e| bad.contains(e)),
                    "seed {seed}: core misses every corrupted read:\n{violation}"
                );
                assert!(violation.events.len() <= 6, "seed {seed}:\n{violation}");
            }
            other => panic!("seed {seed}: stale reads not caught: {other:?}"),
        }
    }
}

#[test]
fn eight_clients_three_hundred_ops_five_keys_check_quickly() {
    let events = simulate(&Workload {
        seed: 42,
        clients: 8,
        ops_per_client: 300,
        keys: 5,
        lost_percent: 1,
    });
    assert_eq!(events.len(), 2400);
    let result = check(&History::from_events(events));
    assert!(result.is_ok(), "{}", result.unwrap_err());
}
