//! `dmpo logits`: the parity tool (input ids in, f32 logits out, both safetensors).

use std::path::PathBuf;

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendTask};
use dllm_model::tensor_file::{write_f32, ArrayFile};
use dllm_model::{ForwardOptions, LogitPositions};

use super::ModelArgs;

/// Arguments of `dmpo logits`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Safetensors file with an I64 or I32 tensor `input_ids` `[batch, seq]` and, optionally,
    /// `attention_mask` of the same shape (1 = token, 0 = padding, not attended to).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the F32 tensor `logits` `[batch, seq, vocab]`.
    #[arg(long)]
    pub output: PathBuf,
}

struct Task(Args);

impl BackendTask for Task {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let a = self.0;
        let file = a.input.display();
        let file_arrays = ArrayFile::open(&a.input)?;
        let names = file_arrays.names()?;
        if let Some(other) = names
            .iter()
            .find(|n| !["input_ids", "attention_mask"].contains(&n.as_str()))
        {
            anyhow::bail!(
                "{file}: unknown tensor `{other}` (the input holds `input_ids` and, optionally, \
                 `attention_mask`)"
            );
        }
        let ids = file_arrays.ints("input_ids")?;
        let [b, s] = match ids.shape[..] {
            [b, s] if b > 0 && s > 0 => [b, s],
            _ => anyhow::bail!(
                "{file}: `input_ids` must be 2-D [batch, seq] with batch, seq >= 1, found shape {:?}",
                ids.shape
            ),
        };
        // HF's convention: 1 = token, 0 = padding (keys at 0 are not attended to).
        let attention_mask = if names.iter().any(|n| n == "attention_mask") {
            let m = file_arrays.ints("attention_mask")?;
            if m.shape != ids.shape {
                anyhow::bail!(
                    "{file}: `attention_mask` has shape {:?}, `input_ids` {:?}",
                    m.shape,
                    ids.shape
                );
            }
            if let Some(bad) = m.values.iter().find(|&&v| v != 0 && v != 1) {
                anyhow::bail!("{file}: `attention_mask` holds {bad}; it must be 0 (pad) or 1");
            }
            if let Some(row) = m.values.chunks(s).position(|r| r.iter().all(|&v| v == 0)) {
                anyhow::bail!(
                    "{file}: row {row} of `attention_mask` is all 0: a row with no token to \
                     attend to has no logits (its attention would be 0/0)"
                );
            }
            Some(m.values)
        } else {
            None
        };
        let model = a.model.load::<B>(&device)?;
        let (vocab, context) = (model.config.embed_size(), model.config.max_sequence_length);
        if s > context {
            anyhow::bail!(
                "{file}: sequences of {s} tokens exceed the model's context (max_sequence_length {context})"
            );
        }
        if let Some(bad) = ids.values.iter().find(|&&t| t < 0 || t as usize >= vocab) {
            anyhow::bail!("{file}: `input_ids` contains {bad}, outside the vocabulary of {vocab}");
        }
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.values, [b, s]), &device);
        let options = ForwardOptions {
            key_padding: attention_mask.map(|m| {
                let hidden: Vec<bool> = m.iter().map(|&v| v == 0).collect();
                Tensor::<B, 2, Bool>::from_data(TensorData::new(hidden, [b, s]), &device)
            }),
            ..ForwardOptions::default()
        };
        let logits = model.forward_with(input, &options, &LogitPositions::All);
        let values = logits
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        write_f32(&a.output, &[("logits", &values, &[b, s, vocab])])?;
        eprintln!("wrote logits [{b}, {s}, {vocab}] to {}", a.output.display());
        Ok(())
    }
}

/// Runs `dmpo logits`.
pub fn run(a: Args) -> anyhow::Result<()> {
    dispatch(a.model.backend, Task(a))?
}
