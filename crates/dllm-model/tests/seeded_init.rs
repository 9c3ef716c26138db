//! Random initialisation is pinned: for a given seed every parameter keeps its exact value
//! (the embedded model's pretraining and the tests that start from `DiffusionLm::init` depend on the
//! order of the random draws and on their distributions).
//!
//! One test in its own binary: burn-flex's generator is process-wide, so no other test may draw
//! between the seed and the initialisation.

use burn::backend::Flex;
use burn::tensor::{backend::Backend, Tensor};
use dllm_model::{DiffusionLm, ModelConfig};

/// Every parameter's values in the model's field order (`wte`, each block's norms then its
/// seven linears, `ln_f`, the head).
fn parameters(model: &DiffusionLm<Flex>) -> Vec<Vec<f32>> {
    fn flat<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32 parameters")
    }
    let mut out = vec![flat(model.wte.val())];
    for block in &model.blocks {
        out.push(flat(block.attn_norm.weight.val()));
        out.push(flat(block.ff_norm.weight.val()));
        for (_, linear) in block.linears() {
            out.push(flat(linear.weight.val()));
        }
    }
    out.push(flat(model.ln_f.weight.val()));
    if let Some(head) = &model.head {
        out.push(flat(head.weight.val()));
    }
    out
}

/// FNV-1a over the bits of every value, in order.
fn fingerprint(parameters: &[Vec<f32>]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for value in parameters.iter().flatten() {
        for byte in value.to_bits().to_le_bytes() {
            hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn seeded(config: &ModelConfig, seed: u64) -> Vec<Vec<f32>> {
    let device = Default::default();
    Flex::seed(&device, seed);
    parameters(&DiffusionLm::<Flex>::init(config, &device))
}

#[test]
fn seeded_init_is_pinned() {
    // Grouped-query attention (2 KV heads for 4 query heads), untied head.
    let mut config = ModelConfig::tiny(16, 2, 4, 24, 30, 29, 28);
    config.n_kv_heads = Some(2);
    let untied = seeded(&config, 7);
    let sizes: Vec<usize> = untied.iter().map(Vec::len).collect();
    let block = [16, 16, 256, 128, 128, 256, 384, 384, 384];
    let want: Vec<usize> = [vec![480], block.to_vec(), block.to_vec(), vec![16, 480]].concat();
    assert_eq!(sizes, want);
    // A few values by their bits: `wte[0]`, block 0's `q_proj[0]`, block 1's last `ff_out`
    // value, the head's last value; the norms are ones.
    assert_eq!(untied[0][0].to_bits(), 1017698990);
    assert_eq!(untied[3][0].to_bits(), 3165321927);
    assert_eq!(untied[18].last().unwrap().to_bits(), 3174137942);
    assert_eq!(untied[20].last().unwrap().to_bits(), 3158410530);
    assert!(untied[1].iter().chain(&untied[19]).all(|&w| w == 1.0));
    assert_eq!(fingerprint(&untied), 0xc561_2811_75a1_a536);

    // Tied: the same draws without the head's.
    config.weight_tying = true;
    let tied = seeded(&config, 7);
    assert_eq!(tied[..], untied[..20]);
    assert_eq!(fingerprint(&tied), 0x1f29_c6e4_8161_d61a);
}
