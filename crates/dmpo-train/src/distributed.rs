//! Data parallelism across peers (`[distributed] devices = N`, docs/distributed.md): each peer
//! generates, scores and differentiates its share of a step's prompt groups; burn-collective's
//! all-reduce sums the gradients, so every peer applies the same AdamW update and the weights
//! stay identical.
//!
//! The exchange of host values (rewards, ELBOs, token ids, losses) also runs on burn-collective's
//! all-reduce, the one operation it offers on every transport: a peer writes its values at their
//! global positions of a zero vector, every value split into four exact 16-bit pieces held as
//! `f32` (integers below 2^24 are exact in `f32`, and adding zeros is exact), and the sum is the
//! gathered vector, bit for bit. burn-collective has no gather; this is the smallest exact one
//! built on what it has.

use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId,
    ReduceOperation,
};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::error::{Result, TrainError};

/// One peer of a data-parallel run: its rank and the number of peers (one: no exchange).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// This peer's index, `0..count`; peer 0 writes metrics, checkpoints and evaluations.
    pub rank: usize,
    /// Peers in the run.
    pub count: usize,
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
        Self { rank: 0, count: 1 }
    }

    /// Whether this peer writes the run's files (rank 0).
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// This peer's contiguous share of `n` items (prompt groups): `n * rank / count ..
    /// n * (rank + 1) / count`, so the shares of all peers cover `0..n` once, in order.
    pub fn share(&self, n: usize) -> Range<usize> {
        n * self.rank / self.count..n * (self.rank + 1) / self.count
    }

    /// Registers peer `rank` of `count` on `device` with the process's collective (blocks until
    /// every peer has registered). The caller holds [`exclusive_collective`].
    pub fn join<B: Backend>(rank: usize, count: usize, device: &B::Device) -> Result<Self> {
        let peer = Self { rank, count };
        if count > 1 {
            let config = CollectiveConfig::default().with_num_devices(count);
            register::<B>(peer.id(), device.clone(), config)
                .map_err(|e| peer.error("joining the collective", e))?;
        }
        Ok(peer)
    }

    /// Leaves the collective (every peer, at the end of the run).
    pub fn leave<B: Backend>(&self) -> Result<()> {
        if self.count > 1 {
            finish_collective::<B>(self.id())
                .map_err(|e| self.error("leaving the collective", e))?;
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
        grads
            .all_reduce::<B>(self.id(), ReduceOperation::Sum)
            .map_err(|e| self.error("all-reducing the gradients", e))
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
        if offset + local.len() > total {
            return Err(TrainError::Distributed(format!(
                "peer {}: values at {offset}..{} of a vector of {total}",
                self.rank,
                offset + local.len()
            )));
        }
        if self.count == 1 {
            let mut out = vec![0.0; total];
            out[offset..offset + local.len()].copy_from_slice(local);
            return Ok(out);
        }
        let mut pieces = vec![0f32; 4 * total];
        for (i, v) in local.iter().enumerate() {
            pieces[4 * (offset + i)..4 * (offset + i + 1)].copy_from_slice(&split(*v));
        }
        let tensor = Tensor::<B, 1>::from_data(TensorData::new(pieces, [4 * total]), device);
        let summed = all_reduce::<B>(
            self.id(),
            tensor.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| self.error("gathering values", e))?;
        let summed = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(summed))
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| TrainError::Distributed(format!("gathered values: {e:?}")))?;
        Ok(summed.chunks(4).map(join).collect())
    }

    /// Each peer's `value`, in rank order, on every peer.
    pub fn gather_each<B: Backend>(&self, value: f64, device: &B::Device) -> Result<Vec<f64>> {
        self.gather::<B>(&[value], self.rank, self.count, device)
    }

    fn id(&self) -> PeerId {
        PeerId(self.rank as u32)
    }

    fn error(&self, what: &str, e: burn::collective::CollectiveError) -> TrainError {
        TrainError::Distributed(format!(
            "peer {} of {}: {what}: {e:?}",
            self.rank, self.count
        ))
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
                    .flat_map(|rank| Peer { rank, count }.share(n))
                    .collect();
                assert_eq!(
                    shares,
                    (0..n).collect::<Vec<_>>(),
                    "{n} groups, {count} peers"
                );
            }
        }
    }
}
