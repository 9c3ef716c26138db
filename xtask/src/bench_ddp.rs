//! `cargo xtask bench ddp`: one data-parallel DMPO optimisation step on the `fixtures/bench`
//! model for 1, 2 and 4 CPU peers — threads of this process (as `dmpo train` runs
//! `distributed.devices`), and, in a build with the `mpi` feature, as many MPI processes of one
//! peer each (`mpirun -np N`, as an MPI job runs) — the step time, the time spent summing the
//! gradients over the peers, and the bytes exchanged per step, for LoRA (r 16, every linear) and
//! for full fine-tuning. The peers split the golden batch's 4 rows; each computes the WDCE loss
//! of its rows, the gradients are summed over peers, and every peer applies AdamW.

use std::time::Instant;

use anyhow::Context;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::tensor_file::read_ints;
use dllm_model::{DiffusionLm, LoraConfig};
use dmpo_core::masks::ReplicateMasks;
use dmpo_core::{wdce_loss_with_masks, DmpoConfig, ModelView, RolloutWeights, SequenceBatch};
use dmpo_train::distributed::gradients::ExchangePlan;
use dmpo_train::distributed::{Layout, Peer};
use serde::Serialize;

use crate::bench::{bench_model, median, Args, BENCH_PROMPT};

type AB<B> = Autodiff<B>;

/// One measured layout.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct DdpRow {
    /// `lora` or `full`.
    pub finetune: String,
    /// `threads` (peers of one process) or `mpi` (one peer per MPI process).
    pub transport: String,
    /// Peers sharing the step.
    pub peers: usize,
    /// Median seconds of one optimisation step (loss, backward, all-reduce, AdamW), peer 0.
    pub step_s: f64,
    /// Median seconds of the step's gradient all-reduce, peer 0 (0 on one peer).
    pub allreduce_s: f64,
    /// Bytes each peer exchanges to sum the gradients per step: the trainable parameters and
    /// one count per parameter, `f32`.
    pub allreduce_bytes: u64,
    /// Buffers exchanged per step to sum the gradients (the count, then the buckets).
    pub exchanges: usize,
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
    if a.mpi_worker {
        return mpi_worker::<B>(a, device);
    }
    let mut rows = Vec::new();
    for lora in [true, false] {
        for transport in ["threads", "mpi"] {
            for peers in [1, 2, 4] {
                let row = match transport {
                    "threads" => measure::<B>(a, lora, peers, device)?,
                    _ => match mpi_row(a, lora, peers)? {
                        Some(row) => row,
                        None => continue,
                    },
                };
                if !a.json {
                    eprintln!(
                        "{:>4} {:>7} {} peer(s): step {:>7.1} ms, gradient sum {:>6.1} ms ({:>4.1}%), {:>9} bytes in {} exchange(s)",
                        row.finetune,
                        row.transport,
                        row.peers,
                        row.step_s * 1e3,
                        row.allreduce_s * 1e3,
                        100.0 * row.allreduce_s / row.step_s,
                        row.allreduce_bytes,
                        row.exchanges
                    );
                }
                rows.push(row);
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

/// The row of `peers` MPI processes (`mpirun -np peers` of this program as a worker), or `None`
/// in a build without MPI (said once).
fn mpi_row(a: &Args, lora: bool, peers: usize) -> anyhow::Result<Option<DdpRow>> {
    if !cfg!(feature = "mpi") {
        if peers == 1 && lora {
            eprintln!("(MPI rows: build xtask with `--features mpi`)");
        }
        return Ok(None);
    }
    let exe = std::env::current_exe()?;
    let mut command = std::process::Command::new("mpirun");
    command
        .args([
            "--oversubscribe",
            "--bind-to",
            "none",
            "-np",
            &peers.to_string(),
        ])
        .arg(exe)
        .args([
            "bench",
            "ddp",
            "--mpi-worker",
            "--reps",
            &a.reps.to_string(),
        ])
        .arg("--dir")
        .arg(&a.dir);
    if !lora {
        command.arg("--full");
    }
    if let Some(config) = &a.random_config {
        command.arg("--random-config").arg(config);
    }
    let out = command
        .output()
        .context("starting mpirun (OpenMPI's `openmpi-bin`)")?;
    anyhow::ensure!(
        out.status.success(),
        "mpirun -np {peers}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("mpirun -np {peers} printed no row: {text}"))?;
    Ok(Some(serde_json::from_str(line)?))
}

/// One MPI process of an MPI row: peer `rank` of the job's processes; rank 0 prints the row.
fn mpi_worker<B: Backend>(a: &Args, device: &B::Device) -> anyhow::Result<()> {
    let section = dmpo_train::recipe::DistributedSection {
        launcher: "mpi".into(),
        ..Default::default()
    };
    let layout = Layout::from_section(&section)?;
    let peer = Peer::on(&layout, layout.rendezvous(), 0);
    let golden = golden(a)?;
    let model = trainable_model::<B>(a, !a.full, device)?;
    let bytes = ExchangePlan::of::<AB<B>, _>(&model).bytes();
    let result = peer_steps::<B>(a, &peer, model, &golden, device);
    match result {
        Ok((step_s, allreduce_s, exchanges)) => {
            if peer.is_leader() {
                let row = DdpRow {
                    finetune: if a.full { "full" } else { "lora" }.into(),
                    transport: "mpi".into(),
                    peers: layout.peers(),
                    step_s,
                    allreduce_s,
                    allreduce_bytes: bytes,
                    exchanges,
                };
                println!("{}", serde_json::to_string(&row)?);
            }
            dmpo_train::distributed::finish_launch();
            Ok(())
        }
        Err(e) => {
            dmpo_train::distributed::abort_launch(&format!("Error: {e:#}"));
            Err(e)
        }
    }
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

/// The bench model, with LoRA adapters (r 16 on every linear) when `lora`.
fn trainable_model<B: Backend>(
    a: &Args,
    lora: bool,
    device: &B::Device,
) -> anyhow::Result<DiffusionLm<AB<B>>> {
    let base = bench_model::<AB<B>>(a, device)?;
    Ok(match lora {
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
    })
}

fn measure<B: Backend>(
    a: &Args,
    lora: bool,
    peers: usize,
    device: &B::Device,
) -> anyhow::Result<DdpRow> {
    let golden = golden(a)?;
    let model = trainable_model::<B>(a, lora, device)?;
    let bytes = ExchangePlan::of::<AB<B>, _>(&model).bytes();
    let layout = Layout::local(peers);
    let rendezvous = layout.rendezvous();
    let threads = (rayon::current_num_threads() / peers).max(1);
    let results: Vec<anyhow::Result<(f64, f64, usize)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..peers)
            .map(|local| {
                let model = DiffusionLm::<AB<B>>::from_inner(model.valid());
                let peer = Peer::on(&layout, rendezvous.clone(), local);
                let golden = &golden;
                scope.spawn(move || {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()?;
                    let out = pool.install(|| peer_steps::<B>(a, &peer, model, golden, device));
                    if let Err(e) = &out {
                        peer.abandon(&e.to_string());
                    }
                    out
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
    let (step_s, allreduce_s, exchanges) = leader.context("no peer")?;
    Ok(DdpRow {
        finetune: if lora { "lora" } else { "full" }.into(),
        transport: "threads".into(),
        peers,
        step_s,
        allreduce_s,
        allreduce_bytes: bytes,
        exchanges,
    })
}

/// `peer`'s optimisation steps on its rows: median step and gradient-sum seconds, and the
/// exchanges of a gradient sum.
fn peer_steps<B: Backend>(
    a: &Args,
    peer: &Peer,
    mut model: DiffusionLm<AB<B>>,
    golden: &Golden,
    device: &B::Device,
) -> anyhow::Result<(f64, f64, usize)> {
    anyhow::ensure!(
        golden.rows.is_multiple_of(peer.count),
        "{} rows do not split over {} peers",
        golden.rows,
        peer.count
    );
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
    let exchanges = match peer.count {
        1 => 0,
        _ => ExchangePlan::of::<AB<B>, _>(&model).exchanges(),
    };
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
        let grads = peer.sum_gradients::<AB<B>, _>(&model, grads)?;
        let reduce_s = reduce.elapsed().as_secs_f64();
        model = optim.step(1e-4, model, grads);
        let _ = model.wte.val().slice([0..1, 0..1]).into_data();
        if i > 0 {
            steps.push(clock.elapsed().as_secs_f64());
            reduces.push(if peer.count > 1 { reduce_s } else { 0.0 });
        }
    }
    Ok((median(steps), median(reduces), exchanges))
}
