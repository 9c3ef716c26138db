//! `cargo xtask bench ddp`: one data-parallel DMPO optimisation step on the `fixtures/bench`
//! model for 1, 2 and 4 CPU peers (threads of this process, burn-collective between them, as
//! `dmpo train` runs `distributed.devices`): the step time, the time spent all-reducing the
//! gradients, and the bytes all-reduced per step, for LoRA (r 16, every linear) and for full
//! fine-tuning. The peers split the golden batch's 4 rows; each computes the WDCE loss of its
//! rows, the gradients are summed over peers, and every peer applies AdamW.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::tensor_file::read_ints;
use dllm_model::{DiffusionLm, LoraConfig};
use dmpo_core::masks::ReplicateMasks;
use dmpo_core::{wdce_loss_with_masks, DmpoConfig, ModelView, RolloutWeights, SequenceBatch};
use dmpo_train::distributed::{exclusive_collective, Layout, Peer};
use serde::Serialize;

use crate::bench::{bench_model, median, Args, BENCH_PROMPT};

type AB<B> = Autodiff<B>;

/// One measured layout.
#[derive(Debug, Serialize)]
pub struct DdpRow {
    /// `lora` or `full`.
    pub finetune: &'static str,
    /// Peers sharing the step.
    pub peers: usize,
    /// Median seconds of one optimisation step (loss, backward, all-reduce, AdamW), peer 0.
    pub step_s: f64,
    /// Median seconds of the step's gradient all-reduce, peer 0 (0 on one peer).
    pub allreduce_s: f64,
    /// Bytes of gradients each peer all-reduces per step (the trainable parameters, f32).
    pub allreduce_bytes: u64,
}

/// Measures every layout on the CPU backend and prints the table (or JSON).
pub fn run(a: &Args) -> anyhow::Result<()> {
    dispatch(BackendKind::Flex, DdpBench { args: a })?
}

struct DdpBench<'a> {
    args: &'a Args,
}

impl BackendTask for DdpBench<'_> {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        measure_all::<B>(self.args, &device)
    }
}

fn measure_all<B: Backend>(a: &Args, device: &B::Device) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for lora in [true, false] {
        for peers in [1, 2, 4] {
            let row = measure::<B>(a, lora, peers, device)?;
            if !a.json {
                eprintln!(
                    "{:>4} {} peer(s): step {:>7.1} ms, all-reduce {:>6.1} ms ({:>4.1}%), {:>9} bytes",
                    row.finetune,
                    row.peers,
                    row.step_s * 1e3,
                    row.allreduce_s * 1e3,
                    100.0 * row.allreduce_s / row.step_s,
                    row.allreduce_bytes
                );
            }
            rows.push(row);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

/// The golden batch of the bench fixture: ids, the loss mask, rows and sequence length.
struct Golden {
    tokens: Vec<i64>,
    mask: Vec<i64>,
    rows: usize,
    seq_len: usize,
}

fn golden(a: &Args) -> anyhow::Result<Golden> {
    let path = a.dir.join("golden_bench.safetensors");
    let tokens = read_ints(&path, "bench_tokens")?;
    let mask = read_ints(&path, "bench_loss_mask")?;
    Ok(Golden {
        rows: tokens.shape[0],
        seq_len: tokens.shape[1],
        tokens: tokens.values,
        mask: mask.values,
    })
}

fn measure<B: Backend>(
    a: &Args,
    lora: bool,
    peers: usize,
    device: &B::Device,
) -> anyhow::Result<DdpRow> {
    let golden = golden(a)?;
    anyhow::ensure!(
        golden.rows.is_multiple_of(peers),
        "{} rows do not split over {peers} peers",
        golden.rows
    );
    let base = bench_model::<AB<B>>(a, device)?;
    let model = match lora {
        true => {
            let config = LoraConfig {
                r: 16,
                lora_alpha: 32.0,
                lora_dropout: 0.0,
                ..LoraConfig::default()
            };
            B::seed(device, 0);
            base.with_lora(&config, device)?
        }
        false => base,
    };
    let bytes = 4 * trainable_elements::<AB<B>, _>(&model);
    let _collective = exclusive_collective();
    Peer::reset::<B>();
    let layout = Arc::new(Layout::local(peers));
    let threads = (rayon::current_num_threads() / peers).max(1);
    let results: Vec<anyhow::Result<(f64, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..peers)
            .map(|rank| {
                let model = DiffusionLm::<AB<B>>::from_inner(model.valid());
                let (layout, golden) = (layout.clone(), &golden);
                scope.spawn(move || {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()?;
                    pool.install(|| peer_steps::<B>(a, layout, rank, model, golden, device))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a peer panicked")))
            })
            .collect()
    });
    let mut leader = None;
    for (rank, r) in results.into_iter().enumerate() {
        let r = r.with_context(|| format!("peer {rank}"))?;
        leader.get_or_insert(r);
    }
    let (step_s, allreduce_s) = leader.context("no peer")?;
    Ok(DdpRow {
        finetune: if lora { "lora" } else { "full" },
        peers,
        step_s,
        allreduce_s,
        allreduce_bytes: bytes,
    })
}

/// Peer `rank`'s optimisation steps on its rows: median step and all-reduce seconds.
fn peer_steps<B: Backend>(
    a: &Args,
    layout: Arc<Layout>,
    rank: usize,
    mut model: DiffusionLm<AB<B>>,
    golden: &Golden,
    device: &B::Device,
) -> anyhow::Result<(f64, f64)> {
    let peer = Peer::join::<B>(layout, rank, device)?;
    let own = peer.share(golden.rows);
    let (n, s) = (own.len(), golden.seq_len);
    let span = own.start * s..own.end * s;
    let ids = Tensor::<AB<B>, 2, Int>::from_data(
        TensorData::new(golden.tokens[span.clone()].to_vec(), [n, s]),
        device,
    );
    let completion = s - BENCH_PROMPT;
    let batch = SequenceBatch::with_eos_index(ids, BENCH_PROMPT, vec![completion; n])?;
    let masks = ReplicateMasks::from_sequence_mask(&golden.mask[span], n, s, BENCH_PROMPT)?;
    // One row per group, so any share of rows holds whole groups.
    let weights = RolloutWeights {
        group_size: 1,
        w_plus: own.clone().map(|r| 0.4 - 0.1 * r as f64).collect(),
        w_minus: own.clone().map(|r| 0.1 + 0.1 * r as f64).collect(),
        ell_cur: vec![0.0; n],
        coeffs: vec![1.0; n],
    };
    let config = DmpoConfig {
        num_replicates: 1,
        antithetic: false,
        ..DmpoConfig::default()
    };
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.01)
        .init::<AB<B>, DiffusionLm<AB<B>>>();
    let (mut steps, mut reduces) = (Vec::new(), Vec::new());
    for i in 0..=a.reps.max(1) {
        let clock = Instant::now();
        let out = wdce_loss_with_masks(
            &ModelView::policy(&model),
            &batch,
            &weights,
            &config,
            &masks,
        )?;
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let reduce = Instant::now();
        let grads = peer.sum_gradients::<B>(grads)?;
        let reduce_s = reduce.elapsed().as_secs_f64();
        model = optim.step(1e-4, model, grads);
        let _ = model.wte.val().slice([0..1, 0..1]).into_data();
        if i > 0 {
            steps.push(clock.elapsed().as_secs_f64());
            reduces.push(if peer.count > 1 { reduce_s } else { 0.0 });
        }
    }
    peer.leave::<B>()?;
    Ok((median(steps), median(reduces)))
}

/// Elements of the parameters that take gradients.
fn trainable_elements<Bk: Backend, M: Module<Bk>>(model: &M) -> u64 {
    struct Count(u64);
    impl<Bv: Backend> ModuleVisitor<Bv> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bv, D>>) {
            let t = param.val();
            if t.is_require_grad() {
                self.0 += t.shape().num_elements() as u64;
            }
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}
