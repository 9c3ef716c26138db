//! The meeting point of one process's peers (threads): every exchange of a step — a sum of
//! gradient buckets, a gather of host values — is a round in which each local peer deposits its
//! part and the process's first peer combines them (and, across processes, runs the MPI
//! operation on the combined part: [`Transport`]), then every local peer reads the result.
//!
//! Written by hand: the standard library's `Barrier` has neither a timeout nor a way to release
//! the waiting threads when one of them fails, and both are what a data-parallel run needs
//! (a peer that errors must not leave the others blocked; one that hangs must be named).
//!
//! The first peer performs every combination, so the process's MPI calls all come from one
//! thread, one at a time.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Result, TrainError};

/// What one round does with the peers' parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// The elementwise sum (every part has the same length).
    Sum,
    /// The parts one after another, in rank order (parts of any length).
    Concat,
}

/// A part of an exchange: the value types the peers exchange.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Gradients and other sums.
    F32(Vec<f32>),
    /// Host values (rewards, ELBOs, losses, digests), exact.
    F64(Vec<f64>),
    /// Token ids and counts.
    U32(Vec<u32>),
}

impl Part {
    fn kind(&self) -> &'static str {
        match self {
            Part::F32(_) => "f32",
            Part::F64(_) => "f64",
            Part::U32(_) => "u32",
        }
    }

    fn len(&self) -> usize {
        match self {
            Part::F32(v) => v.len(),
            Part::F64(v) => v.len(),
            Part::U32(v) => v.len(),
        }
    }

    /// `parts` combined by `how`, in order; an error when their kinds or (for a sum) lengths
    /// differ.
    pub fn combine(parts: Vec<Part>, how: Combine) -> std::result::Result<Part, String> {
        let mut parts = parts.into_iter();
        let Some(mut acc) = parts.next() else {
            return Err("nothing to combine".into());
        };
        for part in parts {
            if how == Combine::Sum && part.len() != acc.len() {
                return Err(format!(
                    "parts of {} and {} values cannot be summed",
                    acc.len(),
                    part.len()
                ));
            }
            match (&mut acc, part) {
                (Part::F32(a), Part::F32(b)) => merge(a, b, how),
                (Part::F64(a), Part::F64(b)) => merge(a, b, how),
                (Part::U32(a), Part::U32(b)) => merge(a, b, how),
                (a, b) => {
                    return Err(format!("a {} part and a {} part", a.kind(), b.kind()));
                }
            }
        }
        Ok(acc)
    }
}

fn merge<T: Copy + std::ops::AddAssign>(acc: &mut Vec<T>, part: Vec<T>, how: Combine) {
    match how {
        Combine::Sum => acc.iter_mut().zip(part).for_each(|(a, b)| *a += b),
        Combine::Concat => acc.extend(part),
    }
}

/// How the combined part of this process reaches the other processes of the run.
pub trait Transport: Send {
    /// `part` (this process's combination) combined with every other process's, in process
    /// order; `what` names the exchange in errors.
    fn combine(&mut self, part: Part, how: Combine, what: &str) -> Result<Part>;
}

/// One process alone: its combination is the result.
pub struct Alone;

impl Transport for Alone {
    fn combine(&mut self, part: Part, _how: Combine, _what: &str) -> Result<Part> {
        Ok(part)
    }
}

struct Round {
    /// Rounds completed.
    generation: u64,
    /// The parts of the current round, by local peer.
    parts: Vec<Option<Part>>,
    /// The first peer is combining the current round (the others wait for it without a limit:
    /// the transport bounds its own waits).
    combining: bool,
    /// The result of the last completed round, read by every local peer.
    result: Option<Arc<Part>>,
    /// Why the run cannot go on (a peer failed): every waiting peer returns it.
    failed: Option<String>,
}

/// The meeting point of the `peers` threads of one process.
pub struct Rendezvous {
    round: Mutex<Round>,
    changed: Condvar,
    /// Global rank of local peer 0 (local peer `i` is `first_rank + i`).
    first_rank: usize,
    /// Peers in the whole run (for messages).
    run_peers: usize,
    timeout: Duration,
    transport: Mutex<Box<dyn Transport>>,
}

impl Rendezvous {
    /// A meeting point for `peers` local peers whose global ranks start at `first_rank`, of
    /// `run_peers` in the run; a peer waits at most `timeout` for the others of its process.
    pub fn new(
        peers: usize,
        first_rank: usize,
        run_peers: usize,
        timeout: Duration,
        transport: Box<dyn Transport>,
    ) -> Self {
        Self {
            round: Mutex::new(Round {
                generation: 0,
                parts: vec![None; peers],
                combining: false,
                result: None,
                failed: None,
            }),
            changed: Condvar::new(),
            first_rank,
            run_peers,
            timeout,
            transport: Mutex::new(transport),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Local peer `local`'s `part` of the exchange `what`, combined by `how` with every other
    /// peer's of the run.
    pub fn exchange(
        &self,
        local: usize,
        part: Part,
        how: Combine,
        what: &str,
    ) -> Result<Arc<Part>> {
        let rank = self.first_rank + local;
        let deadline = Instant::now() + self.timeout;
        let mut round = self.lock();
        if let Some(why) = &round.failed {
            return Err(self.failure(rank, what, why.clone()));
        }
        if round.parts[local].is_some() {
            return Err(self.failure(rank, what, "entered one exchange twice".into()));
        }
        let generation = round.generation;
        round.parts[local] = Some(part);
        self.changed.notify_all();
        if local == 0 {
            // Wait for every local part, combine, pass it on.
            while round.parts.iter().any(Option::is_none) && round.failed.is_none() {
                round = self.wait(round, deadline, rank, what)?;
            }
            if let Some(why) = &round.failed {
                return Err(self.failure(rank, what, why.clone()));
            }
            let parts: Vec<Part> = round.parts.iter_mut().filter_map(Option::take).collect();
            round.combining = true;
            drop(round);
            let combined = Part::combine(parts, how)
                .map_err(|e| self.failure(rank, what, e))
                .and_then(|local| {
                    let mut transport = self.transport.lock().unwrap_or_else(|e| e.into_inner());
                    transport.combine(local, how, what)
                });
            let mut round = self.lock();
            round.combining = false;
            match combined {
                Ok(part) => {
                    let part = Arc::new(part);
                    round.result = Some(part.clone());
                    round.generation += 1;
                    self.changed.notify_all();
                    Ok(part)
                }
                Err(e) => {
                    round.failed = Some(format!("peer {rank} failed: {e}"));
                    self.changed.notify_all();
                    Err(e)
                }
            }
        } else {
            while round.generation == generation && round.failed.is_none() {
                if round.combining {
                    round = self.changed.wait(round).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                round = self.wait(round, deadline, rank, what)?;
            }
            if round.generation == generation {
                let why = round.failed.clone().unwrap_or_default();
                return Err(self.failure(rank, what, why));
            }
            Ok(round
                .result
                .clone()
                .expect("a completed round has a result"))
        }
    }

    /// Waits for a change until `deadline`; past it, fails the run naming the local peers
    /// whose parts have not come.
    fn wait<'g>(
        &self,
        round: MutexGuard<'g, Round>,
        deadline: Instant,
        rank: usize,
        what: &str,
    ) -> Result<MutexGuard<'g, Round>> {
        let left = deadline.saturating_duration_since(Instant::now());
        let (mut round, timeout) = self
            .changed
            .wait_timeout(round, left)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() && Instant::now() >= deadline && !round.combining {
            let missing: Vec<usize> = round
                .parts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.is_none())
                .map(|(i, _)| self.first_rank + i)
                .collect();
            let why = format!(
                "no answer within {:.0} s from peer(s) {missing:?} of this process: stuck or far \
                 slower than this one (raise `distributed.timeout_s` if steps are that \
                 unbalanced)",
                self.timeout.as_secs_f64(),
            );
            round.failed = Some(format!("peer {rank} gave up waiting: {why}"));
            self.changed.notify_all();
            return Err(self.failure(rank, what, why));
        }
        Ok(round)
    }

    /// Releases every waiting peer with `why` (a local peer failed or panicked): no peer waits
    /// for one that will not come.
    pub fn abandon(&self, local: usize, why: &str) {
        let mut round = self.lock();
        if round.failed.is_none() {
            round.failed = Some(format!("peer {} failed: {why}", self.first_rank + local));
        }
        self.changed.notify_all();
    }

    fn failure(&self, rank: usize, what: &str, why: String) -> TrainError {
        TrainError::Distributed(format!("peer {rank} of {}: {what}: {why}", self.run_peers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meeting(peers: usize, timeout_ms: u64) -> Arc<Rendezvous> {
        Arc::new(Rendezvous::new(
            peers,
            0,
            peers,
            Duration::from_millis(timeout_ms),
            Box::new(Alone),
        ))
    }

    #[test]
    fn rounds_sum_and_concatenate_in_rank_order() {
        let r = meeting(3, 10_000);
        let results: Vec<(Part, Part)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|local| {
                    let r = r.clone();
                    s.spawn(move || {
                        let sum = r
                            .exchange(
                                local,
                                Part::F32(vec![local as f32, 1.0]),
                                Combine::Sum,
                                "sum",
                            )
                            .unwrap();
                        let cat = r
                            .exchange(
                                local,
                                Part::U32(vec![local as u32; local]),
                                Combine::Concat,
                                "cat",
                            )
                            .unwrap();
                        ((*sum).clone(), (*cat).clone())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (sum, cat) in results {
            assert_eq!(sum, Part::F32(vec![3.0, 3.0]));
            assert_eq!(cat, Part::U32(vec![1, 2, 2]));
        }
    }

    #[test]
    fn a_peer_that_never_comes_is_named_at_the_timeout() {
        let r = meeting(2, 1000);
        let started = Instant::now();
        let e = r
            .exchange(0, Part::F64(vec![1.0]), Combine::Concat, "gathering values")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("peer 0 of 2: gathering values: no answer within 1 s from peer(s) [1]"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // The run is over for every peer.
        let e = r
            .exchange(1, Part::F64(vec![1.0]), Combine::Concat, "next")
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer 0 gave up waiting"), "{e}");
    }

    #[test]
    fn a_failed_peer_releases_the_waiting_ones() {
        let r = meeting(2, 60_000);
        let started = Instant::now();
        let e = std::thread::scope(|s| {
            let waiting = {
                let r = r.clone();
                s.spawn(move || r.exchange(1, Part::F32(vec![0.0]), Combine::Sum, "sum"))
            };
            std::thread::sleep(Duration::from_millis(50));
            r.abandon(0, "bad data");
            waiting.join().unwrap().unwrap_err().to_string()
        });
        assert!(e.contains("peer 0 failed: bad data"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn parts_that_cannot_be_combined_are_refused() {
        assert!(
            Part::combine(vec![Part::F32(vec![1.0]), Part::F32(vec![])], Combine::Sum)
                .unwrap_err()
                .contains("cannot be summed")
        );
        assert!(Part::combine(
            vec![Part::F32(vec![1.0]), Part::U32(vec![1])],
            Combine::Concat
        )
        .unwrap_err()
        .contains("a f32 part and a u32 part"));
    }
}
