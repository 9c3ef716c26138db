//! `dmpo logits`: the parity tool (input ids in, f32 logits out, both safetensors).

use std::path::PathBuf;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendTask};
use dllm_model::tensor_file::{read_ints, write_f32};

use super::ModelArgs;

/// Arguments of `dmpo logits`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Safetensors file with an I64 or I32 tensor `input_ids` `[batch, seq]`.
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
        let ids = read_ints(&a.input, "input_ids")?;
        if ids.shape.len() != 2 {
            anyhow::bail!(
                "{}: `input_ids` must be 2-D [batch, seq], found shape {:?}",
                a.input.display(),
                ids.shape
            );
        }
        let model = a.model.load::<B>(&device)?;
        let vocab = model.config.embed_size();
        if let Some(bad) = ids.values.iter().find(|&&t| t < 0 || t as usize >= vocab) {
            anyhow::bail!(
                "{}: `input_ids` contains {bad}, outside the vocabulary of {vocab}",
                a.input.display()
            );
        }
        let [b, s] = [ids.shape[0], ids.shape[1]];
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.values, [b, s]), &device);
        let logits = model.forward(input);
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
