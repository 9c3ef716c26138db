//! `SequenceBatch`: prompts and completions as the trainer hands them to the objective.
//!
//! Layout (every function of this crate relies on it): `input_ids` is `[batch, prompt_len +
//! gen_len]`, prompts left-padded to the common `prompt_len`, completions of length `gen_len`
//! after them. Rows are grouped: the `G` completions of one prompt are contiguous
//! (`rows g*G .. (g+1)*G`). `eos_index[i]` is the index *within the completion* of row `i`'s
//! first EOS token, or `gen_len` when it has none (the reference's `eos_idx`); the
//! "completion mask" keeps positions `j <= eos_index[i]`.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::error::{DmpoError, Result};

/// A batch of prompt + completion sequences (see the module docs for the layout).
#[derive(Debug, Clone)]
pub struct SequenceBatch<B: Backend> {
    /// `[batch, prompt_len + gen_len]` token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// Length of the (left-padded) prompt part.
    pub prompt_len: usize,
    /// Per row, index of the first EOS within the completion (`gen_len` if none).
    pub eos_index: Vec<usize>,
    /// Optional `[batch, prompt_len + gen_len]` key padding mask (true = padding, not attended).
    /// `None` attends to padding, as the reference does.
    pub key_padding: Option<Tensor<B, 2, Bool>>,
}

impl<B: Backend> SequenceBatch<B> {
    /// A batch whose EOS positions are found by reading the completions (one host copy).
    pub fn new(input_ids: Tensor<B, 2, Int>, prompt_len: usize, eos_token_id: u32) -> Result<Self> {
        let [batch, seq] = input_ids.dims();
        if prompt_len > seq {
            return Err(DmpoError::shape(format!(
                "prompt_len {prompt_len} exceeds the sequence length {seq}"
            )));
        }
        let gen_len = seq - prompt_len;
        let ids = int_values(input_ids.clone());
        let eos_index = (0..batch)
            .map(|i| {
                first_eos(
                    &ids[i * seq + prompt_len..(i + 1) * seq],
                    eos_token_id as i64,
                )
            })
            .collect::<Vec<_>>();
        debug_assert!(eos_index.iter().all(|&e| e <= gen_len));
        Self::with_eos_index(input_ids, prompt_len, eos_index)
    }

    /// A batch with EOS positions given by the caller.
    pub fn with_eos_index(
        input_ids: Tensor<B, 2, Int>,
        prompt_len: usize,
        eos_index: Vec<usize>,
    ) -> Result<Self> {
        let [batch, seq] = input_ids.dims();
        if prompt_len >= seq {
            return Err(DmpoError::shape(format!(
                "prompt_len {prompt_len} leaves no completion in sequences of length {seq}"
            )));
        }
        if eos_index.len() != batch {
            return Err(DmpoError::shape(format!(
                "{} EOS positions for a batch of {batch}",
                eos_index.len()
            )));
        }
        if let Some(e) = eos_index.iter().find(|&&e| e > seq - prompt_len) {
            return Err(DmpoError::shape(format!(
                "EOS index {e} beyond the completion length {}",
                seq - prompt_len
            )));
        }
        Ok(Self {
            input_ids,
            prompt_len,
            eos_index,
            key_padding: None,
        })
    }

    /// Adds a key padding mask `[batch, prompt_len + gen_len]`.
    pub fn with_key_padding(mut self, key_padding: Tensor<B, 2, Bool>) -> Result<Self> {
        if key_padding.dims() != self.input_ids.dims() {
            return Err(DmpoError::shape(format!(
                "key padding {:?} does not match input ids {:?}",
                key_padding.dims(),
                self.input_ids.dims()
            )));
        }
        self.key_padding = Some(key_padding);
        Ok(self)
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.input_ids.dims()[0]
    }

    /// Total length `prompt_len + gen_len`.
    pub fn seq_len(&self) -> usize {
        self.input_ids.dims()[1]
    }

    /// Completion length `L`.
    pub fn gen_len(&self) -> usize {
        self.seq_len() - self.prompt_len
    }

    /// The completion tokens `[batch, gen_len]`.
    pub fn completion_ids(&self) -> Tensor<B, 2, Int> {
        self.input_ids
            .clone()
            .narrow(1, self.prompt_len, self.gen_len())
    }

    /// Row-major `[batch, gen_len]`: true at positions up to and including the first EOS.
    pub fn completion_mask(&self) -> Vec<bool> {
        let l = self.gen_len();
        self.eos_index
            .iter()
            .flat_map(|&e| (0..l).map(move |j| j <= e))
            .collect()
    }

    /// [`Self::completion_mask`] as a `[batch, gen_len]` float tensor of 0/1.
    pub fn completion_mask_tensor(&self) -> Tensor<B, 2> {
        let data = TensorData::new(self.completion_mask(), [self.batch_size(), self.gen_len()]);
        Tensor::<B, 2, Bool>::from_bool(data, &self.input_ids.device()).float()
    }

    /// The rows `rows` (indices into the batch, repeats allowed) of the ids and key padding.
    pub fn select_rows(&self, rows: &[usize]) -> (Tensor<B, 2, Int>, Option<Tensor<B, 2, Bool>>) {
        let device = self.input_ids.device();
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &device,
        );
        let ids = self.input_ids.clone().select(0, idx.clone());
        let pad = self.key_padding.clone().map(|p| {
            // Bool `select` goes through an int round trip to stay backend-portable.
            p.int().select(0, idx).equal_elem(1)
        });
        (ids, pad)
    }
}

/// Index of the first `eos` in `completion`, or its length when absent.
pub fn first_eos(completion: &[i64], eos: i64) -> usize {
    completion
        .iter()
        .position(|&t| t == eos)
        .unwrap_or(completion.len())
}

/// The values of an int tensor as `i64`, whatever the backend's int element type.
pub(crate) fn int_values<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int tensor data converts to i64")
}

/// The values of a float tensor as `f64`, whatever the backend's float element type.
pub(crate) fn float_values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("float tensor data converts to f64")
}
