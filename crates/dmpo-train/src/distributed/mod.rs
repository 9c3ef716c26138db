//! Data parallelism across peers (`[distributed]`, docs/distributed.md): each peer generates,
//! scores and differentiates its share of a step's rows; the peers' gradients are summed, so
//! every peer applies the same AdamW update and the weights stay identical.
//!
//! Peers are threads of one process (`distributed.devices`, one per GPU or a share of the CPU's
//! cores), and processes of an MPI job (`mpirun`, `srun`: [`launcher`]), each with its threads:
//! peer `process × devices + local`. Every exchange goes through the process's [`Rendezvous`]:
//! its peers' parts are combined in the process, then across processes by the MPI transport
//! ([`mpi`], feature `mpi`). Gradients travel as a few flat buckets ([`gradients`]); host values
//! (token ids, rewards, ELBOs, losses) are gathered exactly, in rank order, with their counts.
//!
//! No exchange waits forever: a peer waits `distributed.timeout_s` for the others of its
//! process, and a process as long for the other processes, then stops the run naming the ones
//! it waited for (an MPI job is aborted, which ends every process).

pub mod gradients;
pub mod launcher;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod rendezvous;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend, Device, DeviceId};
use burn::tensor::Tensor;

pub use rendezvous::Rendezvous;
use rendezvous::{Combine, Part};

use crate::error::{Result, TrainError};
use crate::recipe::DistributedSection;

/// Where a run's peers are: `devices` threads in each of `processes` processes, this process
/// being `process`.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Peers in each process.
    pub devices: usize,
    /// Processes in the run (MPI ranks; 1 without MPI).
    pub processes: usize,
    /// This process's rank.
    pub process: usize,
    /// This process's index among the run's processes on its machine (places it on its GPUs).
    pub machine_slot: usize,
    /// Whether this process writes the run's files (its first peer does): the first process,
    /// and with `distributed.save_on_each_node` the first process of every machine.
    pub writes_files: bool,
    /// How long a peer waits in one exchange.
    pub timeout: Duration,
}

impl Layout {
    /// `devices` peers in this process alone.
    pub fn local(devices: usize) -> Self {
        Self {
            devices,
            processes: 1,
            process: 0,
            machine_slot: 0,
            writes_files: true,
            timeout: Duration::from_secs(600),
        }
    }

    /// The layout a recipe's `[distributed]` section asks for in this process's launch (an MPI
    /// job starts MPI here).
    pub fn from_section(section: &DistributedSection) -> Result<Self> {
        let local = Self {
            timeout: section.timeout(),
            ..Self::local(section.devices)
        };
        match launcher::detect_here(&section.launcher)? {
            launcher::Launch::Single => Ok(local),
            launcher::Launch::Mpi { evidence } => Self::mpi(local, section, &evidence),
        }
    }

    #[cfg(feature = "mpi")]
    fn mpi(local: Self, section: &DistributedSection, _evidence: &str) -> Result<Self> {
        let info = mpi::start()?;
        Ok(Self {
            processes: info.size,
            process: info.rank,
            machine_slot: info.machine_slot,
            writes_files: info.rank == 0 || (section.save_on_each_node && info.machine_slot == 0),
            ..local
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn mpi(_local: Self, _section: &DistributedSection, evidence: &str) -> Result<Self> {
        Err(TrainError::Distributed(format!(
            "this process is a rank of an MPI job ({evidence}), and this dmpo was built without \
             MPI: build it with `cargo build --release -p dmpo-train --features mpi` (an MPI \
             library such as Debian's libopenmpi-dev is needed; docs/distributed.md), or set \
             `distributed.launcher = \"none\"` to run each process on its own"
        )))
    }

    /// Peers in the run, in every process (saturating: a count that overflows is refused as
    /// too many peers for the step's rows).
    pub fn peers(&self) -> usize {
        self.devices.saturating_mul(self.processes)
    }

    /// The global rank of this process's peer `local`.
    pub fn rank_of(&self, local: usize) -> usize {
        self.process * self.devices + local
    }

    /// The meeting point of this process's peers, joined to the other processes.
    pub fn rendezvous(&self) -> Arc<Rendezvous> {
        Arc::new(Rendezvous::new(
            self.devices,
            self.rank_of(0),
            self.peers(),
            self.timeout,
            self.transport(),
        ))
    }

    #[cfg(feature = "mpi")]
    fn transport(&self) -> Box<dyn rendezvous::Transport> {
        match self.processes {
            1 => Box::new(rendezvous::Alone),
            _ => Box::new(mpi::MpiTransport {
                peers_per_process: self.devices,
                timeout: self.timeout,
            }),
        }
    }

    #[cfg(not(feature = "mpi"))]
    fn transport(&self) -> Box<dyn rendezvous::Transport> {
        Box::new(rendezvous::Alone)
    }
}

/// Ends an MPI run that went well (MPI is finished; nothing when the process is not an MPI
/// rank). Every process calls it once its run is over.
pub fn finish_launch() {
    #[cfg(feature = "mpi")]
    mpi::finish();
}

/// Ends the whole MPI job after a failed run in this process, printing `message` first: the
/// other processes may be waiting in an exchange this one will never join. Returns when the
/// process is not an MPI rank.
pub fn abort_launch(message: &str) {
    #[cfg(feature = "mpi")]
    mpi::abort_if_started(message, mpi::ABORT_CODE);
    #[cfg(not(feature = "mpi"))]
    let _ = message;
}

/// The device of peer `index` of the `count` peers that share this machine's devices, the first
/// peer's being `first`: device `first + index` of the same kind (`cuda` 0..N-1 from `cuda:0`)
/// when the backend has that many, `first` itself when the backend has one device of the kind
/// (the CPU; a single GPU shared by every peer), an error naming the shortfall otherwise.
pub fn peer_device<B: Backend>(first: &B::Device, index: usize, count: usize) -> Result<B::Device> {
    let id = first.to_id();
    let available = B::device_count(id.type_id);
    if available <= 1 || index == 0 {
        return Ok(first.clone());
    }
    let last = usize::from(id.index_id) + count - 1;
    if last >= available {
        return Err(TrainError::Distributed(format!(
            "{count} peers on this machine from device {first:?} need device index {last}, and \
             the backend has {available} devices of that kind (`distributed.devices` × the \
             processes on this machine)"
        )));
    }
    Ok(B::Device::from_id(DeviceId {
        type_id: id.type_id,
        index_id: id.index_id + index as u16,
    }))
}

/// One peer of a data-parallel run: its global rank, the number of peers, and the meeting point
/// it exchanges through.
#[derive(Clone)]
pub struct Peer {
    /// This peer's index, `0..count`; peer 0 writes metrics and evaluations.
    pub rank: usize,
    /// Peers in the run.
    pub count: usize,
    /// This peer's index in its process.
    local: usize,
    /// Whether this peer writes its machine's copy of the run's files.
    writes_files: bool,
    rendezvous: Option<Arc<Rendezvous>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer({} of {})", self.rank, self.count)
    }
}

impl Peer {
    /// The only peer of a run on one device.
    pub fn single() -> Self {
        Self::of(0, 1)
    }

    /// Peer `rank` of `count`, outside any exchange (its shares only).
    pub fn of(rank: usize, count: usize) -> Self {
        Self {
            rank,
            count,
            local: rank,
            writes_files: rank == 0,
            rendezvous: None,
        }
    }

    /// This process's peer `local` of `layout`, exchanging through `rendezvous`.
    pub fn on(layout: &Layout, rendezvous: Arc<Rendezvous>, local: usize) -> Self {
        Self {
            rank: layout.rank_of(local),
            count: layout.peers(),
            local,
            writes_files: layout.writes_files && local == 0,
            rendezvous: Some(rendezvous),
        }
    }

    /// Whether this peer writes the run's metrics and evaluations (rank 0).
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Whether this peer writes checkpoints and metrics: the leader, and with
    /// `distributed.save_on_each_node` the first peer of every machine (each machine then
    /// resumes from its own copy).
    pub fn is_node_leader(&self) -> bool {
        self.writes_files
    }

    /// This peer's contiguous share of `n` items (units of rows, evaluation batches):
    /// `n * rank / count .. n * (rank + 1) / count`, so the shares of all peers cover `0..n`
    /// once, in order.
    pub fn share(&self, n: usize) -> Range<usize> {
        n * self.rank / self.count..n * (self.rank + 1) / self.count
    }

    /// This peer's contiguous share of `rows` rows cut into runs of `unit` rows (which divide
    /// `rows`): whole units only, so rows that must stay together stay on one peer.
    pub fn share_rows(&self, rows: usize, unit: usize) -> Range<usize> {
        let unit = unit.max(1);
        let units = self.share(rows / unit);
        units.start * unit..units.end * unit
    }

    /// Releases the run's other peers after this one failed with `why`.
    pub fn abandon(&self, why: &str) {
        if let Some(r) = &self.rendezvous {
            r.abandon(self.local, why);
        }
    }

    fn exchange(&self, part: Part, how: Combine, what: &str) -> Result<Arc<Part>> {
        let r = self.rendezvous.as_ref().ok_or_else(|| {
            TrainError::Distributed(format!(
                "peer {} of {}: {what}: this peer is not part of a run's exchange",
                self.rank, self.count
            ))
        })?;
        r.exchange(self.local, part, how, what)
    }

    /// The sum over peers of each peer's gradients of `model`'s trainable parameters (the same
    /// on every peer), exchanged in buckets ([`gradients`]).
    pub fn sum_gradients<AB: AutodiffBackend, M: AutodiffModule<AB>>(
        &self,
        model: &M,
        grads: GradientsParams,
    ) -> Result<GradientsParams> {
        if self.count == 1 {
            return Ok(grads);
        }
        gradients::sum_gradients::<AB, M>(model, grads, |values, what| {
            match &*self.exchange(Part::F32(values), Combine::Sum, what)? {
                Part::F32(v) => Ok(v.clone()),
                other => Err(self.unexpected(what, other)),
            }
        })
    }

    /// The `total` values of which this peer holds `local` at positions `offset..` (the peers'
    /// values one after another in rank order): every peer gets the whole vector, exactly.
    pub fn gather(&self, local: &[f64], offset: usize, total: usize) -> Result<Vec<f64>> {
        self.gather_as(
            local,
            offset,
            total,
            "gathering values",
            Part::F64,
            |p| match p {
                Part::F64(v) => Some(v),
                _ => None,
            },
        )
    }

    /// [`Peer::gather`] for token ids and other `u32` values.
    pub fn gather_ids(&self, local: &[u32], offset: usize, total: usize) -> Result<Vec<u32>> {
        self.gather_as(
            local,
            offset,
            total,
            "gathering ids",
            Part::U32,
            |p| match p {
                Part::U32(v) => Some(v),
                _ => None,
            },
        )
    }

    /// [`Peer::gather`] of values that travel as the part `wrap` makes and `unwrap` reads.
    fn gather_as<T: Copy + Default + PartialEq>(
        &self,
        local: &[T],
        offset: usize,
        total: usize,
        what: &str,
        wrap: fn(Vec<T>) -> Part,
        unwrap: fn(&Part) -> Option<&Vec<T>>,
    ) -> Result<Vec<T>> {
        self.check_span(local.len(), offset, total)?;
        if self.count == 1 {
            let mut out = vec![T::default(); total];
            out[offset..offset + local.len()].copy_from_slice(local);
            return Ok(out);
        }
        let part = self.exchange(wrap(local.to_vec()), Combine::Concat, what)?;
        let all = unwrap(&part).ok_or_else(|| self.unexpected(what, &part))?;
        self.placed(all, local, offset, total, what)
    }

    /// Each peer's `value`, in rank order, on every peer.
    pub fn gather_each(&self, value: f64) -> Result<Vec<f64>> {
        self.gather(&[value], self.rank, self.count)
    }

    /// The gathered vector `all`, checked to have `total` values with this peer's `local` at
    /// `offset` (the peers' parts in rank order, as every caller lays them out).
    fn placed<T: Copy + PartialEq>(
        &self,
        all: &[T],
        local: &[T],
        offset: usize,
        total: usize,
        what: &str,
    ) -> Result<Vec<T>> {
        let in_place = all.get(offset..offset + local.len()) == Some(local);
        if all.len() != total || !in_place {
            return Err(TrainError::Distributed(format!(
                "peer {} of {}: {what}: the peers' parts make {} values, this peer's at \
                 {offset}..{} of {total} expected: the peers no longer agree on the step",
                self.rank,
                self.count,
                all.len(),
                offset + local.len()
            )));
        }
        Ok(all.to_vec())
    }

    fn unexpected(&self, what: &str, part: &Part) -> TrainError {
        TrainError::Distributed(format!(
            "peer {} of {}: {what}: an exchange returned {part:?}",
            self.rank, self.count
        ))
    }

    fn check_span(&self, len: usize, offset: usize, total: usize) -> Result<()> {
        if offset + len > total {
            return Err(TrainError::Distributed(format!(
                "peer {}: values at {offset}..{} of a vector of {total}",
                self.rank,
                offset + len
            )));
        }
        Ok(())
    }
}

/// A 48-bit digest (FNV-1a over the `f32` bits, exact as an `f64`) of `model`'s trainable
/// parameters in visiting order: equal on peers whose trainable weights are equal.
pub fn trainable_digest<B: Backend, M: Module<B>>(model: &M) -> u64 {
    struct Digest(u64);
    impl<B: Backend> ModuleVisitor<B> for Digest {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let tensor = param.val();
            if !tensor.is_require_grad() {
                return;
            }
            let values = tensor.into_data().convert::<f32>();
            for v in values.iter::<f32>() {
                for byte in v.to_bits().to_le_bytes() {
                    self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
    }
    let mut digest = Digest(0xcbf2_9ce4_8422_2325);
    model.visit(&mut digest);
    digest.0 & ((1 << 48) - 1)
}

impl Peer {
    /// Checks that every peer's trainable weights have the same `digest`
    /// ([`trainable_digest`]); a clear error naming the peers that differ from peer 0's
    /// otherwise.
    pub fn check_same_weights(&self, digest: u64, step: usize) -> Result<()> {
        if self.count == 1 {
            return Ok(());
        }
        let digests = self.gather_each(digest as f64)?;
        let differ: Vec<usize> = (1..self.count)
            .filter(|&r| digests[r] != digests[0])
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        Err(TrainError::Distributed(format!(
            "after step {step} the trainable weights of peer(s) {differ:?} differ from peer 0's \
             (digests {digests:?}): the peers no longer apply the same updates"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_of_all_peers_cover_every_group_once_in_order() {
        for count in 1..=5 {
            for n in count..12 {
                let shares: Vec<usize> = (0..count)
                    .flat_map(|rank| Peer::of(rank, count).share(n))
                    .collect();
                assert_eq!(
                    shares,
                    (0..n).collect::<Vec<_>>(),
                    "{n} groups, {count} peers"
                );
            }
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn peers_share_the_backend_s_only_device() {
        type B = burn::backend::Flex;
        let first = Default::default();
        for local in 0..4 {
            assert_eq!(peer_device::<B>(&first, local, 4).unwrap(), first);
        }
    }
}
