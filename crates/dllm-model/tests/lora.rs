//! LoRA: zero-initialised adapters are a no-op, disabling equals the base, merging equals the
//! adapter forward, and the PEFT layout round-trips bit-exactly.

mod common;

use burn::module::Param;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use common::*;
use dllm_model::tensor_file::read_ints;
use dllm_model::{
    load_model, DiffusionLm, ForwardOptions, LoadOptions, LogitPositions, LoraConfig,
};

type B = burn::backend::Flex;

fn base() -> DiffusionLm<B> {
    load_model::<B>(tiny_dir(), LoadOptions::default(), &Default::default()).unwrap()
}

fn input() -> Tensor<B, 2, Int> {
    let ids = read_ints(golden(), "input_ids").unwrap();
    Tensor::from_data(TensorData::new(ids.values, [2, 24]), &Default::default())
}

fn values(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn small_lora() -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        ..LoraConfig::default()
    }
}

/// Gives every adapter a random, non-zero `B` so it changes the output.
fn randomize_b(mut model: DiffusionLm<B>) -> DiffusionLm<B> {
    for block in &mut model.blocks {
        for (_, lin) in block.linears_mut() {
            if let Some(l) = lin.lora.as_mut() {
                let dims = l.b.val().dims();
                l.b = Param::from_tensor(Tensor::random(
                    dims,
                    Distribution::Normal(0.0, 0.5),
                    &Default::default(),
                ));
            }
        }
    }
    model
}

#[test]
fn zero_initialised_adapter_gives_base_logits() {
    let want = values(base().forward(input()));
    let model = base()
        .with_lora(&small_lora(), &Default::default())
        .unwrap();
    assert!(model.has_adapter());
    assert_eq!(values(model.forward(input())), want);
}

#[test]
fn disabled_adapter_equals_base_and_enabled_differs() {
    let want = values(base().forward(input()));
    let model = randomize_b(
        base()
            .with_lora(&small_lora(), &Default::default())
            .unwrap(),
    );
    let off =
        values(model.forward_with(input(), &ForwardOptions::reference(), &LogitPositions::All));
    assert_eq!(off, want);
    let on = values(model.forward(input()));
    assert!(max_diff(&on, &want) > 1e-2, "adapter has no effect");
}

#[test]
fn merge_equals_adapter_forward() {
    let model = randomize_b(
        base()
            .with_lora(&small_lora(), &Default::default())
            .unwrap(),
    );
    let with_adapter = values(model.forward(input()));
    let merged = model.merge_adapters();
    assert!(!merged.has_adapter());
    let diff = max_diff(&values(merged.forward(input())), &with_adapter);
    assert!(diff < 1e-4, "merge differs by {diff}");
}

#[test]
fn targets_subset_only() {
    let cfg = LoraConfig {
        target_modules: vec!["q_proj".into(), "ff_out".into()],
        ..small_lora()
    };
    let model = base().with_lora(&cfg, &Default::default()).unwrap();
    for block in &model.blocks {
        for (name, lin) in block.linears() {
            assert_eq!(
                lin.lora.is_some(),
                name == "q_proj" || name == "ff_out",
                "{name}"
            );
        }
    }
    let bad = LoraConfig {
        target_modules: vec!["lm_head".into()],
        ..small_lora()
    };
    let e = base()
        .with_lora(&bad, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`lm_head` is not a linear layer of a block"),
        "{e}"
    );
    // Dream's names reach the same layers of a LLaDA model.
    let dream_names = LoraConfig {
        target_modules: vec!["q_proj".into(), "down_proj".into()],
        ..small_lora()
    };
    let model = base().with_lora(&dream_names, &Default::default()).unwrap();
    let attached: Vec<&str> = model.blocks[0]
        .linears()
        .into_iter()
        .filter(|(_, l)| l.lora.is_some())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(attached, ["q_proj", "ff_out"]);
}

#[test]
fn peft_round_trip_is_bit_exact() {
    let model = randomize_b(
        base()
            .with_lora(&small_lora(), &Default::default())
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    model.save_adapter(dir.path(), "llada-tiny").unwrap();
    // PEFT's key layout and matrix orientation.
    let file = dir.path().join("adapter_model.safetensors");
    let a = dllm_model::tensor_file::read_floats(
        &file,
        "base_model.model.model.transformer.blocks.1.ff_out.lora_A.weight",
    )
    .unwrap();
    assert_eq!(a.shape, vec![4, 192]);
    let b = dllm_model::tensor_file::read_floats(
        &file,
        "base_model.model.model.transformer.blocks.0.k_proj.lora_B.weight",
    )
    .unwrap();
    assert_eq!(b.shape, vec![64, 4]);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);

    let loaded = base()
        .load_adapter(dir.path(), &Default::default())
        .unwrap();
    for (x, y) in model.blocks.iter().zip(&loaded.blocks) {
        for ((_, lx), (_, ly)) in x.linears().iter().zip(y.linears().iter()) {
            let (la, lb) = (lx.lora.as_ref().unwrap(), ly.lora.as_ref().unwrap());
            assert_eq!(la.a.val().into_data(), lb.a.val().into_data());
            assert_eq!(la.b.val().into_data(), lb.b.val().into_data());
            assert_eq!(la.scale, lb.scale);
        }
    }
    assert_eq!(
        values(model.forward(input())),
        values(loaded.forward(input()))
    );
}

#[test]
fn adapter_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = base()
        .load_adapter(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"#,
    )
    .unwrap();
    let e = base()
        .load_adapter(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    // Wrong rank in the config for the stored matrices.
    let model = randomize_b(
        base()
            .with_lora(&small_lora(), &Default::default())
            .unwrap(),
    );
    model.save_adapter(dir.path(), "x").unwrap();
    let text = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        text.replace("\"r\": 4", "\"r\": 8"),
    )
    .unwrap();
    let e = base()
        .load_adapter(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("lora_A.weight` has shape [4, 64]"), "{e}");
}

#[test]
fn base_weights_are_frozen() {
    type AB = burn::backend::Autodiff<B>;
    let model = load_model::<AB>(tiny_dir(), LoadOptions::default(), &Default::default())
        .unwrap()
        .with_lora(&small_lora(), &Default::default())
        .unwrap();
    let ids = read_ints(golden(), "input_ids").unwrap();
    let x =
        Tensor::<AB, 2, Int>::from_data(TensorData::new(ids.values, [2, 24]), &Default::default());
    let loss = model.forward(x).sum();
    let grads = loss.backward();
    let blk = &model.blocks[0];
    assert!(blk.attn.q_proj.weight.val().grad(&grads).is_none());
    assert!(model.wte.val().grad(&grads).is_none());
    assert!(blk
        .attn
        .q_proj
        .lora
        .as_ref()
        .unwrap()
        .b
        .val()
        .grad(&grads)
        .is_some());
}

#[test]
fn adapter_dropout_outside_autodiff_only_when_asked() {
    let cfg = LoraConfig {
        lora_dropout: 0.5,
        ..small_lora()
    };
    let model = randomize_b(base().with_lora(&cfg, &Default::default()).unwrap());
    let plain = values(model.forward(input()));
    // A no-grad backend: burn's dropout is off, so two passes agree.
    assert_eq!(values(model.forward(input())), plain);
    let always = model.with_adapter_dropout_always(true);
    let (a, b) = (
        values(always.forward(input())),
        values(always.forward(input())),
    );
    assert!(max_diff(&a, &plain) > 1e-4 && max_diff(&a, &b) > 1e-4);
    // Off again: deterministic, the plain output.
    let off = always.with_adapter_dropout_always(false);
    assert_eq!(values(off.forward(input())), plain);
}
