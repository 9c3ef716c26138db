//! The run's processes joined by MPI (rsmpi over the system's MPI library: OpenMPI, MPICH),
//! behind the `mpi` feature.
//!
//! - The process starts MPI once, asking for `MPI_THREAD_SERIALIZED` (and refusing less): its
//!   MPI calls come from one peer thread at a time (the process's first peer combines every
//!   exchange, [`super::rendezvous`]), not from the thread that started MPI.
//! - Every exchange is announced first: each process posts its exchange number to every other
//!   and waits for theirs, so that a process whose partners do not come knows which ones they
//!   are. Then the operation itself runs as a non-blocking collective (`MPI_Iallreduce` for
//!   sums, `MPI_Iallgatherv` for gathers of variable counts). Both are polled against
//!   `distributed.timeout_s`; past it the process prints which ranks (and hosts) it waits for
//!   and calls `MPI_Abort`, which ends every process of the job: an MPI collective whose partner
//!   died or stopped would otherwise wait forever.
//! - Ranks on the same machine are found with `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`; a
//!   process's index among them places it on its GPU.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::request::{LocalScope, Request};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::{Count, Threading};

use super::rendezvous::{Combine, Part, Transport};
use crate::error::{Result, TrainError};

/// Exit status of a job this process aborts.
pub const ABORT_CODE: i32 = 3;
/// Tag of the exchange announcements.
const ANNOUNCE_TAG: i32 = 0x444d;

/// Where this process stands in the MPI job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// This process's rank in the job.
    pub rank: usize,
    /// Processes in the job.
    pub size: usize,
    /// This process's index among the job's processes on its machine.
    pub machine_slot: usize,
    /// Every process's host name, by rank.
    pub hosts: Vec<String>,
}

/// The started MPI library and the job's communicator.
struct Session {
    world: SimpleCommunicator,
    info: ProcessInfo,
    /// Exchanges announced so far.
    announced: u64,
    /// Dropped last: finalises MPI.
    _universe: Universe,
}

// SAFETY: MPI runs with MPI_THREAD_SERIALIZED (checked at start), which allows calls from any
// thread as long as no two are concurrent; every use of the session goes through `SESSION`'s
// mutex.
unsafe impl Send for Session {}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

fn lock() -> std::sync::MutexGuard<'static, Option<Session>> {
    SESSION.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts MPI in this process (once; later calls return the same facts).
pub fn start() -> Result<ProcessInfo> {
    let mut session = lock();
    if let Some(s) = session.as_ref() {
        return Ok(s.info.clone());
    }
    let (universe, provided) =
        mpi::initialize_with_threading(Threading::Serialized).ok_or_else(|| {
            TrainError::Distributed(
                "MPI was already started and finished in this process: one MPI run per process"
                    .into(),
            )
        })?;
    if provided < Threading::Serialized {
        return Err(TrainError::Distributed(format!(
            "the MPI library offers thread support {provided:?}; training needs \
             MPI_THREAD_SERIALIZED (its peers call MPI from a thread other than the main one)"
        )));
    }
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let machine = world.split_shared(world.rank());
    let machine_slot = machine.rank() as usize;
    let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
    let hosts = gather_names(&world, &host);
    let info = ProcessInfo {
        rank,
        size,
        machine_slot,
        hosts,
    };
    *session = Some(Session {
        world,
        info: info.clone(),
        announced: 0,
        _universe: universe,
    });
    Ok(info)
}

/// Every process's `name`, by rank (blocking: at start, before any timeout applies).
fn gather_names(world: &SimpleCommunicator, name: &str) -> Vec<String> {
    let size = world.size() as usize;
    let bytes = name.as_bytes();
    let mut lengths = vec![0 as Count; size];
    world.all_gather_into(&(bytes.len() as Count), &mut lengths[..]);
    let displs = offsets(&lengths);
    let mut all = vec![0u8; lengths.iter().map(|&n| n as usize).sum()];
    {
        let mut partition = PartitionMut::new(&mut all[..], &lengths[..], &displs[..]);
        world.all_gather_varcount_into(bytes, &mut partition);
    }
    (0..size)
        .map(|r| {
            let (start, len) = (displs[r] as usize, lengths[r] as usize);
            String::from_utf8_lossy(&all[start..start + len]).into_owned()
        })
        .collect()
}

fn offsets(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0, |acc, &n| {
            let start = *acc;
            *acc += n;
            Some(start)
        })
        .collect()
}

/// Finishes MPI after a run that ended well (every process calls it).
pub fn finish() {
    lock().take();
}

/// Ends the whole job with `code` after `message` (on stderr), when MPI was started; returns
/// otherwise.
pub fn abort_if_started(message: &str, code: i32) {
    let session = lock();
    if let Some(s) = session.as_ref() {
        eprintln!("{message}");
        s.world.abort(code);
    }
}

/// The MPI transport of a process whose peers number `peers_per_process` per process.
pub struct MpiTransport {
    /// Peers per process (to name the peers of a rank in messages).
    pub peers_per_process: usize,
    /// How long a process waits in one exchange.
    pub timeout: Duration,
}

impl Transport for MpiTransport {
    fn combine(&mut self, part: Part, how: Combine, what: &str) -> Result<Part> {
        let mut session = lock();
        let s = session.as_mut().ok_or_else(|| {
            TrainError::Distributed(format!("{what}: MPI is not started in this process"))
        })?;
        let deadline = Instant::now() + self.timeout;
        s.announce(what, deadline, self);
        let combined = match (part, how) {
            (Part::F32(v), Combine::Sum) => Part::F32(s.sum(v, what, deadline, self)),
            (Part::F32(v), Combine::Concat) => Part::F32(s.concat(&v, what, deadline, self)),
            (Part::F64(v), Combine::Concat) => Part::F64(s.concat(&v, what, deadline, self)),
            (Part::U32(v), Combine::Concat) => Part::U32(s.concat(&v, what, deadline, self)),
            (part, Combine::Sum) => {
                return Err(TrainError::Distributed(format!(
                    "{what}: sums over MPI are of f32 values, not {part:?}"
                )))
            }
        };
        Ok(combined)
    }
}

impl Session {
    /// Posts this exchange's number to every other process and waits for theirs.
    fn announce(&mut self, what: &str, deadline: Instant, t: &MpiTransport) {
        self.announced += 1;
        let number = self.announced;
        let me = self.info.rank;
        let mut heard = vec![0u64; self.info.size];
        let world = &self.world;
        mpi::request::scope(|scope: &LocalScope<'_>| {
            let sends: Vec<Request<'_, u64, &LocalScope<'_>>> = (0..self.info.size)
                .filter(|&r| r != me)
                .map(|r| {
                    world.process_at_rank(r as i32).immediate_send_with_tag(
                        scope,
                        &number,
                        ANNOUNCE_TAG,
                    )
                })
                .collect();
            let mut receives: Vec<(usize, Option<Request<'_, u64, &LocalScope<'_>>>)> = heard
                .iter_mut()
                .enumerate()
                .filter(|(r, _)| *r != me)
                .map(|(r, slot)| {
                    let request = world
                        .process_at_rank(r as i32)
                        .immediate_receive_into_with_tag(scope, slot, ANNOUNCE_TAG);
                    (r, Some(request))
                })
                .collect();
            let mut pause = Pause::new();
            loop {
                for (_, slot) in receives.iter_mut() {
                    if let Some(request) = slot.take() {
                        *slot = request.test().err();
                    }
                }
                let waiting: Vec<usize> = receives
                    .iter()
                    .filter(|(_, r)| r.is_some())
                    .map(|(r, _)| *r)
                    .collect();
                if waiting.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    let names = self.name_ranks(&waiting, t);
                    self.abort(
                        what,
                        &format!(
                            "no answer within {:.0} s from {names}: stopped, hung or dead (raise \
                             `distributed.timeout_s` if steps are that unbalanced). Relaunch the \
                             same command with --resume",
                            t.timeout.as_secs_f64()
                        ),
                        t,
                    );
                }
                pause.sleep();
            }
            for send in sends {
                poll(send, deadline, || self.abort(what, &self.unfinished(t), t));
            }
        });
        let disagree: Vec<String> = heard
            .iter()
            .enumerate()
            .filter(|&(r, &n)| r != me && n != number)
            .map(|(r, n)| format!("rank {r} is at exchange {n}"))
            .collect();
        if !disagree.is_empty() {
            self.abort(
                what,
                &format!(
                    "this process is at exchange {number}, {}: the processes no longer run the \
                     same steps",
                    disagree.join(", ")
                ),
                t,
            );
        }
    }

    /// The elementwise sum over processes of `values`.
    fn sum(&self, values: Vec<f32>, what: &str, deadline: Instant, t: &MpiTransport) -> Vec<f32> {
        let mut out = vec![0f32; values.len()];
        mpi::request::scope(|scope| {
            let request = self.world.immediate_all_reduce_into(
                scope,
                &values[..],
                &mut out[..],
                mpi::collective::SystemOperation::sum(),
            );
            poll(request, deadline, || {
                self.abort(what, &self.unfinished(t), t)
            });
        });
        out
    }

    /// Every process's `values`, one after another in rank order.
    fn concat<T: Equivalence + Copy + Default>(
        &self,
        values: &[T],
        what: &str,
        deadline: Instant,
        t: &MpiTransport,
    ) -> Vec<T> {
        let count = Count::try_from(values.len()).unwrap_or_else(|_| {
            self.abort(
                what,
                &format!("{} values are too many for one gather", values.len()),
                t,
            )
        });
        let mut counts = vec![0 as Count; self.info.size];
        mpi::request::scope(|scope| {
            let request = self
                .world
                .immediate_all_gather_into(scope, &count, &mut counts[..]);
            poll(request, deadline, || {
                self.abort(what, &self.unfinished(t), t)
            });
        });
        let displs = offsets(&counts);
        let mut out = vec![T::default(); counts.iter().map(|&n| n as usize).sum()];
        {
            let mut partition = PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
            mpi::request::scope(|scope| {
                let request =
                    self.world
                        .immediate_all_gather_varcount_into(scope, values, &mut partition);
                poll(request, deadline, || {
                    self.abort(what, &self.unfinished(t), t)
                });
            });
        }
        out
    }

    fn unfinished(&self, t: &MpiTransport) -> String {
        format!(
            "every process announced this exchange, and it did not finish within {:.0} s (a \
             process stopped or died during it). Relaunch the same command with --resume",
            t.timeout.as_secs_f64()
        )
    }

    /// `ranks` with their hosts and peers, for messages.
    fn name_ranks(&self, ranks: &[usize], t: &MpiTransport) -> String {
        ranks
            .iter()
            .map(|&r| {
                let n = t.peers_per_process;
                format!(
                    "MPI rank {r} (host {}, peers {}..={})",
                    self.info.hosts.get(r).map_or("?", String::as_str),
                    r * n,
                    r * n + n - 1
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn abort(&self, what: &str, why: &str, t: &MpiTransport) -> ! {
        let n = t.peers_per_process;
        let first = self.info.rank * n;
        eprintln!(
            "Error: MPI rank {} of {} (host {}, peers {first}..={}): {what}: {why}. Aborting the \
             job.",
            self.info.rank,
            self.info.size,
            self.info.hosts[self.info.rank],
            first + n - 1
        );
        self.world.abort(ABORT_CODE)
    }
}

/// Tests `request` until it completes, or calls `give_up` (which ends the job, so that the
/// pending request is never dropped) once `deadline` has passed.
fn poll<'a, D: ?Sized>(
    request: Request<'a, D, &LocalScope<'a>>,
    deadline: Instant,
    give_up: impl FnOnce(),
) {
    let mut request = request;
    let mut pause = Pause::new();
    loop {
        match request.test() {
            Ok(_) => return,
            Err(pending) => request = pending,
        }
        if Instant::now() >= deadline {
            give_up();
            // `give_up` ends the job; were it to return, the request must still not be dropped.
            std::process::abort();
        }
        pause.sleep();
    }
}

/// Growing sleeps between tests of a request: short at first (an exchange usually completes in
/// microseconds), at most 2 ms, so that a waiting process leaves the cores to the others.
struct Pause(Duration);

impl Pause {
    fn new() -> Self {
        Self(Duration::from_micros(10))
    }

    fn sleep(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(2));
    }
}
