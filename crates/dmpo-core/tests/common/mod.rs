//! Test models: fixed-logit tables and an oracle that predicts one sequence with probability 1.
#![allow(dead_code)]

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use dmpo_core::{LogitsModel, SequenceBatch};
use std::path::PathBuf;

pub type B = burn::backend::Flex;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Returns the same completion logits `[L, V]` for every row, whatever the input.
pub struct TableModel {
    pub logits: Vec<f32>,
    pub gen_len: usize,
    pub vocab: usize,
    pub mask_id: u32,
}

impl<Bk: Backend> LogitsModel<Bk> for TableModel {
    fn completion_logits(
        &self,
        input_ids: Tensor<Bk, 2, Int>,
        prompt_len: usize,
        _key_padding: Option<Tensor<Bk, 2, Bool>>,
    ) -> Tensor<Bk, 3> {
        let [rows, seq] = input_ids.dims();
        assert_eq!(seq - prompt_len, self.gen_len);
        let t = Tensor::<Bk, 3>::from_data(
            TensorData::new(self.logits.clone(), [1, self.gen_len, self.vocab]),
            &input_ids.device(),
        );
        t.expand([rows, self.gen_len, self.vocab])
    }

    fn mask_token_id(&self) -> u32 {
        self.mask_id
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }
}

/// A model that puts (numerically) all probability on the tokens of `target` (a completion).
pub fn oracle(target: &[i64], vocab: usize, mask_id: u32) -> TableModel {
    let mut logits = vec![0.0f32; target.len() * vocab];
    for (j, &t) in target.iter().enumerate() {
        logits[j * vocab + t as usize] = 1000.0;
    }
    TableModel {
        logits,
        gen_len: target.len(),
        vocab,
        mask_id,
    }
}

/// A batch of `rows` copies of `prompt ++ completion`.
pub fn batch_of<Bk: Backend>(
    prompt: &[i64],
    completion: &[i64],
    rows: usize,
    eos: u32,
) -> SequenceBatch<Bk> {
    let seq: Vec<i64> = prompt.iter().chain(completion).copied().collect();
    let len = seq.len();
    let data: Vec<i64> = (0..rows).flat_map(|_| seq.clone()).collect();
    let ids =
        Tensor::<Bk, 2, Int>::from_data(TensorData::new(data, [rows, len]), &Default::default());
    SequenceBatch::new(ids, prompt.len(), eos).unwrap()
}

/// A batch from explicit rows.
pub fn batch_rows<Bk: Backend>(
    rows: &[Vec<i64>],
    prompt_len: usize,
    eos: u32,
) -> SequenceBatch<Bk> {
    let len = rows[0].len();
    let data: Vec<i64> = rows.iter().flatten().copied().collect();
    let ids = Tensor::<Bk, 2, Int>::from_data(
        TensorData::new(data, [rows.len(), len]),
        &Default::default(),
    );
    SequenceBatch::new(ids, prompt_len, eos).unwrap()
}

pub fn scalar<Bk: Backend>(t: Tensor<Bk, 1>) -> f64 {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
}

pub fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

pub fn log_softmax(xs: &[f64]) -> Vec<f64> {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z = xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    xs.iter().map(|x| x - z).collect()
}

pub fn assert_close(a: f64, b: f64, tol: f64) {
    assert!(
        (a - b).abs() <= tol * (1.0 + b.abs()),
        "{a} vs {b} (tol {tol})"
    );
}

use burn::module::Param;
use burn::tensor::Distribution;
use dllm_model::{load_model, DiffusionLm, LoadOptions, LoraConfig};

/// The real tiny LLaDA checkpoint of the fixtures (vocab 300, mask 299, eos 298).
pub fn tiny_llada<Bk: Backend>() -> DiffusionLm<Bk> {
    load_model::<Bk>(
        fixtures().join("llada-tiny"),
        LoadOptions::default(),
        &Default::default(),
    )
    .unwrap()
}

/// The tiny model with rank-2 adapters on every linear, `B` random so the adapter matters.
pub fn tiny_llada_lora<Bk: Backend>(seed: u64) -> DiffusionLm<Bk> {
    let device = Default::default();
    Bk::seed(&device, seed);
    let config = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        lora_dropout: 0.0,
        ..LoraConfig::default()
    };
    let mut model = tiny_llada::<Bk>().with_lora(&config, &device).unwrap();
    for block in &mut model.blocks {
        for (_, lin) in block.linears_mut() {
            if let Some(l) = lin.lora.as_mut() {
                let dims = l.b.val().dims();
                l.b = Param::from_tensor(Tensor::random(
                    dims,
                    Distribution::Normal(0.0, 0.3),
                    &device,
                ));
            }
        }
    }
    model
}
