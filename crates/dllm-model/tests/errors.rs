//! Every malformed input gives an error naming the file and the field or tensor.

mod common;

use std::path::Path;

use common::*;
use dllm_model::tensor_file::{names, read_floats, write_f32};
use dllm_model::{load_model, LoadOptions, ModelError};

type B = burn::backend::Flex;

fn copy_tiny(to: &Path) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_dir().join(f), to.join(f)).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match load_model::<B>(dir, LoadOptions::default(), &Default::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{from} not in config");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

/// Rewrites `model.safetensors` with `edit` applied to the list of (name, values, shape).
fn rewrite_weights(dir: &Path, edit: impl Fn(&mut Vec<(String, Vec<f32>, Vec<usize>)>)) {
    let src = tiny_dir().join("model.safetensors");
    let mut all: Vec<(String, Vec<f32>, Vec<usize>)> = names(&src)
        .unwrap()
        .into_iter()
        .map(|n| {
            let a = read_floats(&src, &n).unwrap();
            (n, a.values.iter().map(|&x| x as f32).collect(), a.shape)
        })
        .collect();
    edit(&mut all);
    let arrays: Vec<(&str, &[f32], &[usize])> = all
        .iter()
        .map(|(n, v, s)| (n.as_str(), v.as_slice(), s.as_slice()))
        .collect();
    write_f32(dir.join("model.safetensors"), &arrays).unwrap();
}

#[test]
fn missing_directory() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(e.contains("/nonexistent/model/config.json"), "{e}");
}

#[test]
fn missing_weights() {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(tiny_dir().join("config.json"), d.path().join("config.json")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("no `model.safetensors`"), "{e}");
}

#[test]
fn malformed_config() {
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    edit_config(d.path(), "\"d_model\": 64,", "\"d_model\": 64");
    let e = load_err(d.path());
    assert!(e.contains("config.json: malformed JSON"), "{e}");
}

#[test]
fn unsupported_block_type() {
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    edit_config(
        d.path(),
        "\"block_type\": \"llama\"",
        "\"block_type\": \"sequential\"",
    );
    let e = load_err(d.path());
    assert!(
        e.contains("field `block_type`") && e.contains("sequential"),
        "{e}"
    );
}

#[test]
fn bad_head_count() {
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    edit_config(d.path(), "\"n_kv_heads\": 4", "\"n_kv_heads\": 3");
    let e = load_err(d.path());
    assert!(e.contains("field `n_kv_heads`"), "{e}");
}

#[test]
fn truncated_weights() {
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors: invalid safetensors file"),
        "{e}"
    );
}

#[test]
fn missing_tensor() {
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    rewrite_weights(d.path(), |all| {
        all.retain(|(n, _, _)| n != "model.transformer.blocks.1.up_proj.weight")
    });
    let e = load_err(d.path());
    assert!(
        e.contains("missing tensor `model.transformer.blocks.1.up_proj.weight`"),
        "{e}"
    );
}

#[test]
fn wrong_shape() {
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    rewrite_weights(d.path(), |all| {
        for (n, v, s) in all.iter_mut() {
            if n == "model.transformer.blocks.0.q_proj.weight" {
                v.truncate(32 * 64);
                *s = vec![32, 64];
            }
        }
    });
    let e = load_err(d.path());
    assert!(
        e.contains("`model.transformer.blocks.0.q_proj.weight` has shape [32, 64]")
            && e.contains("[64, 64]"),
        "{e}"
    );
}

#[test]
fn config_weights_mismatch() {
    // Fewer layers in the config than in the weights: extra tensors are refused.
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    edit_config(d.path(), "\"n_layers\": 2", "\"n_layers\": 1");
    let e = load_err(d.path());
    assert!(
        e.contains("config/weights mismatch") && e.contains("blocks.1"),
        "{e}"
    );
    // More layers in the config than in the weights: the first absent tensor is named.
    edit_config(d.path(), "\"n_layers\": 1", "\"n_layers\": 3");
    let e = load_err(d.path());
    assert!(
        e.contains("missing tensor `model.transformer.blocks.2."),
        "{e}"
    );
    // A different width.
    edit_config(d.path(), "\"n_layers\": 3", "\"n_layers\": 2");
    edit_config(
        d.path(),
        "\"mlp_hidden_size\": 192",
        "\"mlp_hidden_size\": 128",
    );
    let e = load_err(d.path());
    assert!(e.contains("ff_proj.weight` has shape [192, 64]"), "{e}");
}

#[test]
fn missing_shard() {
    let d = tempfile::tempdir().unwrap();
    let src = tiny_dir().join("sharded");
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    let e = load_err(d.path());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn malformed_index() {
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        "{\"metadata\": {}}",
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors.index.json: field `weight_map`"),
        "{e}"
    );
}

#[test]
fn unsupported_dtype() {
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    dllm_model::tensor_file::write_i64(
        d.path().join("model.safetensors"),
        &[(
            "model.transformer.blocks.0.attn_norm.weight",
            &[0i64; 64],
            &[64],
        )],
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("`model.transformer.blocks.0.attn_norm.weight` has unsupported dtype I64"),
        "{e}"
    );
}

#[test]
fn error_type_is_matchable() {
    let d = tempfile::tempdir().unwrap();
    copy_tiny(d.path());
    edit_config(d.path(), "\"alibi\": false", "\"alibi\": true");
    let e = load_model::<B>(d.path(), LoadOptions::default(), &Default::default()).unwrap_err();
    assert!(matches!(e, ModelError::Config { ref field, .. } if field == "alibi"));
}
