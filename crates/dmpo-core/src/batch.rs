//! `SequenceBatch`: prompts and completions as the trainer hands them to the objective.
//!
//! Layout (every function of this crate relies on it): `input_ids` is `[batch, prompt_len +
//! gen_len]`, prompts left-padded to the common `prompt_len`, completions of length `gen_len`
//! after them. Rows are grouped: the `G` completions of one prompt are contiguous
//! (`rows g*G .. (g+1)*G`). `eos_index[i]` is the index *within the completion* of row `i`'s
//! first EOS token, or `gen_len` when it has none (the reference's `eos_idx`); the
//! "completion mask" keeps positions `j <= eos_index[i]`.
//!
//! A rollout is kept on the host as a [`HostBatch`], from which [`SequenceBatch`]es of any rows
//! (the whole rollout, or one micro-batch) are built on a device; [`gather_rows`] and
//! [`rows_tensor`] select rows of other per-row host matrices the same way.

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

/// A batch of sequences held on the host, in the [`SequenceBatch`] layout (row-major ids,
/// EOS positions, optional key padding), from which device batches of chosen rows are built.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    ids: Vec<i64>,
    seq_len: usize,
    prompt_len: usize,
    eos_index: Vec<usize>,
    key_padding: Option<Vec<bool>>,
}

impl HostBatch {
    /// A batch of `eos_index.len()` rows of `seq_len` ids each (`ids` row-major), prompts of
    /// `prompt_len`, and an optional row-major key padding mask of the ids' shape.
    pub fn new(
        ids: Vec<i64>,
        seq_len: usize,
        prompt_len: usize,
        eos_index: Vec<usize>,
        key_padding: Option<Vec<bool>>,
    ) -> Result<Self> {
        let rows = eos_index.len();
        if ids.len() != rows * seq_len {
            return Err(DmpoError::shape(format!(
                "{} ids for {rows} rows of length {seq_len}",
                ids.len()
            )));
        }
        if prompt_len >= seq_len {
            return Err(DmpoError::shape(format!(
                "prompt_len {prompt_len} leaves no completion in sequences of length {seq_len}"
            )));
        }
        if let Some(e) = eos_index.iter().find(|&&e| e > seq_len - prompt_len) {
            return Err(DmpoError::shape(format!(
                "EOS index {e} beyond the completion length {}",
                seq_len - prompt_len
            )));
        }
        if let Some(p) = &key_padding {
            if p.len() != ids.len() {
                return Err(DmpoError::shape(format!(
                    "key padding of {} entries for {} ids",
                    p.len(),
                    ids.len()
                )));
            }
        }
        Ok(Self {
            ids,
            seq_len,
            prompt_len,
            eos_index,
            key_padding,
        })
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.eos_index.len()
    }

    /// Whether the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.eos_index.is_empty()
    }

    /// Length of the (left-padded) prompt part.
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// First EOS position of each completion (`gen_len` when it has none).
    pub fn eos_index(&self) -> &[usize] {
        &self.eos_index
    }

    /// Total length `prompt_len + gen_len`.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The ids, row-major `[len * seq_len]`.
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// The key padding mask (true = padding), row-major like the ids, when there is one.
    pub fn key_padding(&self) -> Option<&[bool]> {
        self.key_padding.as_deref()
    }

    /// Completion length `L`.
    pub fn gen_len(&self) -> usize {
        self.seq_len - self.prompt_len
    }

    /// The rows `rows` (indices into the batch, in that order, repeats allowed) as a device
    /// batch; an error when a row is out of range.
    pub fn select<B: Backend>(
        &self,
        rows: &[usize],
        device: &B::Device,
    ) -> Result<SequenceBatch<B>> {
        let ids = gather_rows(&self.ids, self.seq_len, rows)?;
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [rows.len(), self.seq_len]),
            device,
        );
        let eos = rows.iter().map(|&r| self.eos_index[r]).collect();
        let mut batch = SequenceBatch::with_eos_index(ids, self.prompt_len, eos)?;
        if let Some(p) = &self.key_padding {
            let mask = gather_rows(p, self.seq_len, rows)?;
            batch = batch.with_key_padding(Tensor::<B, 2, Bool>::from_data(
                TensorData::new(mask, [rows.len(), self.seq_len]),
                device,
            ))?;
        }
        Ok(batch)
    }

    /// Every row, in order, as a device batch.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> Result<SequenceBatch<B>> {
        let rows: Vec<usize> = (0..self.len()).collect();
        self.select(&rows, device)
    }
}

/// The rows `rows` (in that order, repeats allowed) of a row-major host matrix of rows of
/// `width` values; an error when a row lies beyond `values`.
pub fn gather_rows<T: Copy>(values: &[T], width: usize, rows: &[usize]) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        let row = r
            .checked_mul(width)
            .and_then(|start| values.get(start..start.checked_add(width)?))
            .ok_or_else(|| {
                DmpoError::shape(format!(
                    "row {r} beyond a matrix of {} values in rows of {width}",
                    values.len()
                ))
            })?;
        out.extend_from_slice(row);
    }
    Ok(out)
}

/// [`gather_rows`] of a row-major `f32` host matrix as a `[rows.len(), width]` tensor.
pub fn rows_tensor<B: Backend>(
    values: &[f32],
    width: usize,
    rows: &[usize],
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let data = gather_rows(values, width, rows)?;
    Ok(Tensor::from_data(
        TensorData::new(data, [rows.len(), width]),
        device,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    /// Three rows of a 2-token prompt and a 3-token completion, the first row left-padded.
    fn host(padding: bool) -> HostBatch {
        let ids = vec![0, 1, 10, 11, 12, 2, 3, 20, 21, 22, 4, 5, 30, 31, 32];
        let pad = padding.then(|| (0..15).map(|i| i == 0).collect());
        HostBatch::new(ids, 5, 2, vec![3, 1, 0], pad).unwrap()
    }

    fn ids(batch: &SequenceBatch<B>) -> Vec<i64> {
        int_values(batch.input_ids.clone())
    }

    #[test]
    fn selected_rows_come_in_the_asked_order() {
        let host = host(true);
        assert_eq!((host.len(), host.gen_len()), (3, 3));
        let batch = host.select::<B>(&[2, 0, 0], &Default::default()).unwrap();
        assert_eq!(
            ids(&batch),
            [4, 5, 30, 31, 32, 0, 1, 10, 11, 12, 0, 1, 10, 11, 12]
        );
        assert_eq!(
            (batch.prompt_len, &batch.eos_index[..]),
            (2, &[0, 3, 3][..])
        );
        let pad = batch
            .key_padding
            .unwrap()
            .into_data()
            .to_vec::<bool>()
            .unwrap();
        assert_eq!(pad, (0..15).map(|i| i == 5 || i == 10).collect::<Vec<_>>());
    }

    #[test]
    fn the_whole_batch_keeps_every_row_and_no_padding_means_none() {
        let batch = host(false).to_device::<B>(&Default::default()).unwrap();
        assert_eq!(ids(&batch), host(false).ids);
        assert_eq!(batch.eos_index, [3, 1, 0]);
        assert!(batch.key_padding.is_none());
    }

    #[test]
    fn bad_shapes_and_rows_are_refused() {
        assert!(HostBatch::new(vec![0; 14], 5, 2, vec![0; 3], None).is_err());
        assert!(HostBatch::new(vec![0; 15], 5, 5, vec![0; 3], None).is_err());
        assert!(HostBatch::new(vec![0; 15], 5, 2, vec![4, 0, 0], None).is_err());
        assert!(HostBatch::new(vec![0; 15], 5, 2, vec![0; 3], Some(vec![false; 5])).is_err());
        assert!(host(true).select::<B>(&[3], &Default::default()).is_err());
    }

    #[test]
    fn gathered_rows_of_host_matrices() {
        let m = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(gather_rows(&m, 2, &[2, 0]).unwrap(), [5.0, 6.0, 1.0, 2.0]);
        assert!(gather_rows(&m, 2, &[3]).is_err());
        assert!(gather_rows(&m, 4, &[1]).is_err());
        assert!(gather_rows(&m, 0, &[5]).unwrap().is_empty());
        let t = rows_tensor::<B>(&m, 3, &[1], &Default::default()).unwrap();
        assert_eq!(t.dims(), [1, 3]);
        assert_eq!(t.into_data().to_vec::<f32>().unwrap(), [4.0, 5.0, 6.0]);
    }
}
