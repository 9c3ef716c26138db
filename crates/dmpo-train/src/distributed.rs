//! Data parallelism across peers (`[distributed]`, docs/distributed.md): each peer generates,
//! scores and differentiates its share of a step's rows; burn-collective's all-reduce
//! sums the gradients, so every peer applies the same AdamW update and the weights stay
//! identical. Peers are threads of one process (`devices`) on one machine or on several
//! (`nodes`, joined through burn-collective's global orchestrator, [`run_orchestrator`]).
//!
//! The exchange of host values (rewards, ELBOs, token ids, losses) also runs on burn-collective's
//! all-reduce, the one operation it offers on every transport: a peer writes its values at their
//! global positions of a zero vector, every value split into four exact 16-bit pieces held as
//! `f32` (integers below 2^24 are exact in `f32`, and adding zeros is exact), and the sum is the
//! gathered vector, bit for bit. burn-collective has no gather; this is the smallest exact one
//! built on what it has.
//!
//! burn-collective has no timeouts: an operation whose partner died waits forever. Every
//! exchange here runs on a helper thread that the peer waits for at most
//! `distributed.timeout_s`; past it the peer probes the other machines and stops with an error
//! naming the ones that no longer answer.

use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, CollectiveError,
    PeerId, ReduceOperation,
};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{Backend, Device, DeviceId};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::error::{Result, TrainError};
use crate::recipe::{parse_host_port, DistributedSection};

/// Where a run's peers are: `devices` on each of the machines `nodes` (this one alone when
/// empty), this machine being `nodes[node_rank]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Peers on each machine.
    pub devices: usize,
    /// Every machine's `host:port` (its tensor service), in node order; empty: one machine.
    pub nodes: Vec<String>,
    /// This machine's index in `nodes`.
    pub node_rank: usize,
    /// `host:port` of the global orchestrator (several machines).
    pub orchestrator: Option<String>,
    /// How long a peer waits in one exchange.
    pub timeout: Duration,
}

impl Layout {
    /// One peer on one machine.
    pub fn single() -> Self {
        Self::local(1)
    }

    /// `devices` peers on this machine alone.
    pub fn local(devices: usize) -> Self {
        Self {
            devices,
            nodes: Vec::new(),
            node_rank: 0,
            orchestrator: None,
            timeout: Duration::from_secs(600),
        }
    }

    /// The layout a recipe's `[distributed]` section asks for (validated by the recipe).
    pub fn from_section(section: &DistributedSection) -> Self {
        Self {
            devices: section.devices,
            nodes: section.nodes.clone(),
            node_rank: section.node_rank,
            orchestrator: section.orchestrator.clone(),
            timeout: section.timeout(),
        }
    }

    /// Peers in the run, on every machine.
    pub fn peers(&self) -> usize {
        self.devices * self.nodes.len().max(1)
    }

    /// The global rank of this machine's peer `local`: machines in node order, each holding
    /// `devices` consecutive ranks.
    pub fn rank_of(&self, local: usize) -> usize {
        self.node_rank * self.devices + local
    }

    /// burn-collective's configuration of this machine's peers.
    fn config(&self) -> std::result::Result<CollectiveConfig, String> {
        let config = CollectiveConfig::default().with_num_devices(self.devices);
        if self.nodes.len() < 2 {
            return Ok(config);
        }
        let own = &self.nodes[self.node_rank];
        let (_, port) = parse_host_port(own)?;
        let orchestrator = self
            .orchestrator
            .as_deref()
            .ok_or("no `distributed.orchestrator`")?;
        // burn-communication reads websocket addresses only with their scheme.
        Ok(config
            .with_num_nodes(self.nodes.len() as u32)
            .with_global_address(format!("ws://{orchestrator}").parse()?)
            .with_node_address(format!("ws://{own}").parse()?)
            .with_data_service_port(port))
    }

    /// The machines other than this one, and the orchestrator, that refuse or ignore a
    /// connection, with why.
    fn unreachable_nodes(&self) -> Vec<String> {
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != self.node_rank)
            .filter_map(|(i, node)| {
                probe(node)
                    .err()
                    .map(|why| format!("node {i} ({node}, peers {:?}): {why}", self.ranks_of(i)))
            });
        let orchestrator = self
            .orchestrator
            .iter()
            .filter(|_| self.nodes.len() > 1)
            .filter_map(|o| {
                probe(o)
                    .err()
                    .map(|why| format!("the orchestrator ({o}): {why}"))
            });
        nodes.chain(orchestrator).collect()
    }

    fn ranks_of(&self, node: usize) -> Range<usize> {
        node * self.devices..(node + 1) * self.devices
    }
}

/// The device of this machine's peer `local` of `devices`, the first peer's being `first`:
/// device `first + local` of the same kind (`cuda` 0..N-1 from `cuda:0`) when the backend has
/// that many, `first` itself when the backend has one device of the kind (the CPU; a single
/// GPU shared by every peer), an error naming the shortfall otherwise.
pub fn peer_device<B: Backend>(
    first: &B::Device,
    local: usize,
    devices: usize,
) -> Result<B::Device> {
    let id = first.to_id();
    let available = B::device_count(id.type_id);
    if available <= 1 || local == 0 {
        return Ok(first.clone());
    }
    let last = usize::from(id.index_id) + devices - 1;
    if last >= available {
        return Err(TrainError::Distributed(format!(
            "`distributed.devices` {devices} from device {first:?} needs device index {last}, \
             and the backend has {available} devices of that kind"
        )));
    }
    let index_id = id.index_id + local as u16;
    Ok(B::Device::from_id(DeviceId {
        type_id: id.type_id,
        index_id,
    }))
}

/// Whether something listens at `host:port` (a TCP connection within two seconds).
fn probe(address: &str) -> std::result::Result<(), String> {
    let addrs = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?;
    let mut last = "no address".to_string();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// One peer of a data-parallel run: its global rank, the number of peers, and where they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// This peer's index, `0..count`; peer 0 writes metrics and evaluations.
    pub rank: usize,
    /// Peers in the run.
    pub count: usize,
    layout: Arc<Layout>,
}

/// burn-collective's server is one per process and backend: one distributed run at a time.
static COLLECTIVE: Mutex<()> = Mutex::new(());

/// Holds the process's collective for one distributed run (a second run waits).
pub fn exclusive_collective() -> MutexGuard<'static, ()> {
    COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

impl Peer {
    /// The only peer of a run on one device.
    pub fn single() -> Self {
        Self::of(0, 1)
    }

    /// Peer `rank` of `count` on one machine, outside any collective (its shares only).
    pub fn of(rank: usize, count: usize) -> Self {
        Self {
            rank,
            count,
            layout: Arc::new(Layout::local(count)),
        }
    }

    /// Whether this peer writes the run's metrics and evaluations (rank 0).
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Whether this peer writes its machine's checkpoints (the first peer of every machine:
    /// each machine resumes from its own copy).
    pub fn is_node_leader(&self) -> bool {
        self.rank.is_multiple_of(self.layout.devices)
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

    /// Registers this machine's peer `local` of `layout` with the process's collective (and,
    /// on several machines, through it with the orchestrator); returns once every peer of the
    /// run has joined, or with an error after `layout.timeout`. The caller holds
    /// [`exclusive_collective`].
    pub fn join<B: Backend>(layout: Arc<Layout>, local: usize, device: &B::Device) -> Result<Self> {
        let peer = Self {
            rank: layout.rank_of(local),
            count: layout.peers(),
            layout,
        };
        if peer.count > 1 {
            let config = peer.layout.config().map_err(|e| {
                TrainError::Distributed(format!("peer {}: the layout: {e}", peer.rank))
            })?;
            let (id, device) = (peer.id(), device.clone());
            peer.within("joining the run", move || register::<B>(id, device, config))?;
        }
        Ok(peer)
    }

    /// Leaves the collective (every peer, at the end of the run).
    pub fn leave<B: Backend>(&self) -> Result<()> {
        if self.count > 1 {
            let id = self.id();
            self.within("leaving the run", move || finish_collective::<B>(id))?;
        }
        Ok(())
    }

    /// Forgets every registration of the process's collective on backend `B` (before a run,
    /// after a failed one).
    pub fn reset<B: Backend>() {
        reset_collective::<B>();
    }

    /// The sum over peers of each peer's gradients (the same on every peer).
    pub fn sum_gradients<B: Backend>(&self, grads: GradientsParams) -> Result<GradientsParams> {
        if self.count == 1 {
            return Ok(grads);
        }
        let id = self.id();
        self.within("all-reducing the gradients", move || {
            grads.all_reduce::<B>(id, ReduceOperation::Sum)
        })
    }

    /// The `total` values of which this peer holds `local` at positions `offset..`: every peer
    /// gets the whole vector, bit for bit (the module doc says how).
    pub fn gather<B: Backend>(
        &self,
        local: &[f64],
        offset: usize,
        total: usize,
        device: &B::Device,
    ) -> Result<Vec<f64>> {
        self.check_span(local.len(), offset, total)?;
        if self.count == 1 {
            // Alone: the vector is this peer's values in place, no pieces to split and join.
            let mut out = vec![0.0; total];
            out[offset..offset + local.len()].copy_from_slice(local);
            return Ok(out);
        }
        let mut pieces = vec![0f32; 4 * total];
        for (i, v) in local.iter().enumerate() {
            pieces[4 * (offset + i)..4 * (offset + i + 1)].copy_from_slice(&split(*v));
        }
        let summed = self.sum_host::<B>(pieces, "gathering values", device)?;
        Ok(summed.chunks(4).map(join).collect())
    }

    /// [`Peer::gather`] for token ids and other integers below 2^24, one `f32` each (a quarter
    /// of the bytes).
    pub fn gather_ids<B: Backend>(
        &self,
        local: &[u32],
        offset: usize,
        total: usize,
        device: &B::Device,
    ) -> Result<Vec<u32>> {
        self.check_span(local.len(), offset, total)?;
        if let Some(v) = local.iter().find(|&&v| v >= 1 << 24) {
            return Err(TrainError::Distributed(format!(
                "peer {}: {v} is too large to gather as an id (below 2^24)",
                self.rank
            )));
        }
        let mut values = vec![0f32; total];
        for (slot, v) in values[offset..].iter_mut().zip(local) {
            *slot = *v as f32;
        }
        let summed = self.sum_host::<B>(values, "gathering ids", device)?;
        Ok(summed.into_iter().map(|v| v as u32).collect())
    }

    /// Each peer's `value`, in rank order, on every peer.
    pub fn gather_each<B: Backend>(&self, value: f64, device: &B::Device) -> Result<Vec<f64>> {
        self.gather::<B>(&[value], self.rank, self.count, device)
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

    /// The elementwise sum over peers of `values` (exact for the layouts above: one peer
    /// writes each position, the others zeros).
    fn sum_host<B: Backend>(
        &self,
        values: Vec<f32>,
        what: &str,
        device: &B::Device,
    ) -> Result<Vec<f32>> {
        if self.count == 1 {
            return Ok(values);
        }
        let n = values.len();
        let tensor = Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device);
        let primitive = tensor.into_primitive().tensor();
        let id = self.id();
        let summed = self.within(what, move || {
            all_reduce::<B>(id, primitive, ReduceOperation::Sum)
        })?;
        Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(summed))
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| TrainError::Distributed(format!("{what}: {e:?}")))
    }

    /// Runs one collective operation on a helper thread and waits for it at most the
    /// layout's timeout: burn-collective's own calls would wait forever for a dead peer.
    fn within<T: Send + 'static>(
        &self,
        what: &str,
        op: impl FnOnce() -> std::result::Result<T, CollectiveError> + Send + 'static,
    ) -> Result<T> {
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("collective-peer{}", self.rank))
            .spawn(move || {
                // The receiver is gone when the peer gave up waiting.
                let _ = sender.send(op());
            })
            .map_err(|e| self.failure(what, format!("cannot start a thread: {e}")))?;
        match receiver.recv_timeout(self.layout.timeout) {
            Ok(result) => result.map_err(|e| {
                let unreachable = self.layout.unreachable_nodes();
                let why = match unreachable.is_empty() {
                    true => format!("{e:?}"),
                    false => format!("{e:?}; not answering: {}", unreachable.join("; ")),
                };
                self.failure(what, why)
            }),
            Err(RecvTimeoutError::Disconnected) => {
                Err(self.failure(what, "burn-collective panicked".into()))
            }
            Err(RecvTimeoutError::Timeout) => {
                let unreachable = self.layout.unreachable_nodes();
                let why = if self.layout.nodes.is_empty() {
                    "another peer of this process is stuck or far slower than this one (raise \
                     `distributed.timeout_s` if steps are that unbalanced)"
                        .to_string()
                } else if unreachable.is_empty() {
                    "every machine still answers: a peer is stuck or far slower than this one \
                     (raise `distributed.timeout_s` if steps are that unbalanced)"
                        .to_string()
                } else {
                    format!("not answering: {}", unreachable.join("; "))
                };
                Err(self.failure(
                    what,
                    format!(
                        "no answer from the other peers within {:.0} s; {why}. Restart the run \
                         on every machine (and the orchestrator) with --resume",
                        self.layout.timeout.as_secs_f64()
                    ),
                ))
            }
        }
    }

    fn id(&self) -> PeerId {
        PeerId(self.rank as u32)
    }

    fn failure(&self, what: &str, why: String) -> TrainError {
        TrainError::Distributed(format!(
            "peer {} of {}: {what}: {why}",
            self.rank, self.count
        ))
    }
}

/// Runs burn-collective's global orchestrator on `port` (all interfaces) until the process is
/// interrupted: the meeting point of the machines of a multi-machine run, one per run.
pub fn run_orchestrator(port: u16) -> Result<()> {
    // burn-collective logs a failed bind and returns; a clear error first is kinder.
    std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        TrainError::Distributed(format!(
            "the orchestrator cannot listen on port {port}: {e}"
        ))
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::Distributed(format!("the orchestrator's runtime: {e}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
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
    pub fn check_same_weights<B: Backend>(
        &self,
        digest: u64,
        step: usize,
        device: &B::Device,
    ) -> Result<()> {
        if self.count == 1 {
            return Ok(());
        }
        let digests = self.gather_each::<B>(digest as f64, device)?;
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

/// `v`'s 64 bits as four 16-bit integers held exactly in `f32`, low first.
fn split(v: f64) -> [f32; 4] {
    let bits = v.to_bits();
    std::array::from_fn(|i| ((bits >> (16 * i)) & 0xffff) as f32)
}

/// The inverse of [`split`].
fn join(pieces: &[f32]) -> f64 {
    let bits = pieces
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, &p)| acc | ((p as u64) << (16 * i)));
    f64::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_are_exact_for_every_kind_of_value() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -3.25,
            1e-310,
            f64::MAX,
            f64::INFINITY,
            0.1 + 0.2,
        ] {
            assert_eq!(join(&split(v)).to_bits(), v.to_bits());
        }
        assert!(join(&split(f64::NAN)).is_nan());
    }

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

    #[cfg(feature = "flex")]
    #[test]
    fn a_peer_whose_partner_never_joins_stops_at_the_timeout() {
        type B = burn::backend::Flex;
        let _collective = exclusive_collective();
        Peer::reset::<B>();
        let layout = Layout {
            timeout: Duration::from_secs(1),
            ..Layout::local(2)
        };
        let started = std::time::Instant::now();
        let e = Peer::join::<B>(Arc::new(layout), 0, &Default::default())
            .unwrap_err()
            .to_string();
        Peer::reset::<B>();
        assert!(
            e.contains("peer 0 of 2: joining the run: no answer from the other peers within 1 s"),
            "{e}"
        );
        assert!(e.contains("another peer of this process is stuck"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
