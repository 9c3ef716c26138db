"""Token-exact goldens of the DMPO reference's rollout samplers on the tiny Sudoku model.

Runs the reference's own sampler code on `models/tiny-sudoku` (its predictions are confident
enough for the thresholds and factors to commit several tokens a step; torch, CPU, float32) and
writes what it generates to `fixtures/samplers/`, read by `crates/dllm-sample/tests/golden_samplers.rs`:

  * Fast-dLLM's block-wise parallel decoding (`fast_samplers/fast_dllm/generate.py`):
    `generate_pd` (no cache), `generate_with_prefix_cache`, `generate_with_dual_cache`, each
    with the factor rule (`factor`) and with the confidence threshold (`threshold_pd`);
  * WINO (`fast_samplers/wino/generate.py`, `generate_wino`, with that directory's
    `modeling_llada.py`, which takes the shadow's attention mask and positions);
  * ROAR (`DMPO/dmpo_trainer.py`, `DMPOTrainer.generate_and_compute_log_rnd`, called on a stand-in
    for the trainer that holds the model and the two settings it reads).

Each case also records its forward passes (`<case>_nfe`: per row where the rows run one at a
time, for the batch otherwise).

Inputs: the reference repository (yuchen-zhu-zyc/DMPO, fetched; nothing of it is copied here)
and the model. Every case is greedy (temperature 0), on a batch of three Sudoku prompts of 39,
38 and 34 tokens left-padded with the pad id, which the reference attends to. Factor
cases run row by row: the reference's `get_transfer_index_dynamic` stops with an IndexError when
a row has no masked position left in the window while another row has some (the script records
whether the batched call ran); threshold cases run the batch at once.

ROAR draws its order of positions with `torch.rand(...).argsort()`; here `torch.rand` is
replaced, for that call only, by the draws the Rust sampler makes: rand_chacha's `ChaCha8Rng`
seeded with `seed_from_u64(seed)`, one stream per row (`set_stream(row)`), uniform f64 from the
top 53 bits of each u64 — written out below (`ChaCha8`) — and `torch.zeros` keeps the
log-probabilities in f32 where the reference asks for bf16 (its model runs in bf16; this one in
f32, which bf16 arrays refuse). Greedy token choice draws nothing else.
Temperatures above 0 are not matched: the Gumbel noise of the other samplers covers every
position of the logits in the reference and only the scored positions in Rust, so the two
streams are laid out differently even from the same generator.

Usage (torch and transformers; `samplers.json` records the versions used):

    python scripts/sampler_golden.py --reference PATH/DMPO
"""

import argparse
import ast
import importlib
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

GEN_LENGTH, BLOCK_LENGTH = 24, 8
# Three puzzles of the shipped 4x4 test set (0 = empty), in LLaDA's chat template; the second
# prompt drops the start token and the third drops the start token and the puzzle's first row,
# so the batch holds prompts of 39, 38 and 34 tokens.
PUZZLES = ["3102200002100320", "0140432014020000", "4310010000303420"]
FACTORS = [0.5, 1.0, 2.0]
THRESHOLDS = [0.5, 0.9]
WINO = [(0.6, 0.9), (0.3, 0.6), (0.8, 0.95), (0.5, 0.99), (0.5, 1.0), (0.2, 1.0)]
ROAR_SEEDS = [0, 7]
MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1


def load_package(directory: Path, name: str):
    """Imports a reference directory as namespace package `name` (its modules import each other
    relatively)."""
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(directory)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    return module


def trainer_methods(path: Path, names):
    """The methods `names` of `DMPOTrainer` in `path`, compiled from the file's own source into a
    bare class (importing the trainer would need trl, accelerate, wandb and datasets)."""
    tree = ast.parse(path.read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DMPOTrainer")
    methods = [n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {m.name for m in methods} == set(names), f"{path}: missing one of {names}"
    bare = ast.Module(body=[ast.ClassDef(name="TrainerMethods", bases=[], keywords=[],
                                         body=methods, decorator_list=[])], type_ignores=[])
    ast.fix_missing_locations(bare)
    namespace = {"torch": torch}
    exec(compile(bare, str(path), "exec"), namespace)
    return namespace["TrainerMethods"]


def tiny_model(package: str, model_dir: Path):
    """The checkpoint in `model_dir` in the reference's `LLaDAModelLM` of `package`."""
    modeling = importlib.import_module(f"{package}.modeling_llada")
    configuration = importlib.import_module(f"{package}.configuration_llada")
    config = configuration.LLaDAConfig(**json.loads((model_dir / "config.json").read_text()))
    config.use_cache = False
    model = modeling.LLaDAModelLM(config)
    model.load_state_dict(load_file(model_dir / "model.safetensors"), strict=True)
    return model.float().eval()


def chat_prompt(vocab, puzzle: str):
    """LLaDA's chat template around `puzzle`, one token per character (the model's tokenizer)."""
    tokens = ["<|startoftext|>", "<|start_header_id|>", *"user", "<|end_header_id|>", *"\n\n",
              *puzzle, "<|eot_id|>", "<|start_header_id|>", *"assistant", "<|end_header_id|>",
              *"\n\n"]
    return [vocab[t] for t in tokens]


class Evaluations:
    """Counts the forward passes of a model (the reference's samplers report none)."""

    def __init__(self, model):
        self.count = 0
        model.register_forward_pre_hook(self._seen)

    def _seen(self, *_):
        self.count += 1

    def of(self, run):
        """`run()`'s result and the passes it made."""
        before = self.count
        result = run()
        return result, self.count - before


def model_facts(model_dir: Path):
    config = json.loads((model_dir / "config.json").read_text())
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    return config["mask_token_id"], config["pad_token_id"], vocab


def padded_prompts(model_dir: Path) -> torch.Tensor:
    _, pad, vocab = model_facts(model_dir)
    full = [chat_prompt(vocab, p) for p in PUZZLES]
    prompts = [full[0], full[1][1:], full[2][1:9] + full[2][13:]]
    width = max(len(p) for p in prompts)
    return torch.tensor([[pad] * (width - len(p)) + p for p in prompts])


class ChaCha8:
    """rand_chacha's ChaCha8Rng (rand 0.9): `seed_from_u64`, `set_stream`, `next_u64`."""

    def __init__(self, seed: int, stream: int):
        key = []
        state = seed & MASK64
        for _ in range(8):  # rand_core's seed_from_u64: PCG32 output, one word per 4 bytes
            state = (state * 6364136223846793005 + 11634580027462260723) & MASK64
            xorshifted = (((state >> 18) ^ state) >> 27) & MASK32
            rot = state >> 59
            key.append(((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & MASK32)
        self.key = key
        self.stream = stream & MASK64
        self.counter = 0
        self.words = []

    @staticmethod
    def _rotl(v, c):
        return ((v << c) | (v >> (32 - c))) & MASK32

    def _block(self):
        const = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
        s = const + self.key + [
            self.counter & MASK32,
            self.counter >> 32,
            self.stream & MASK32,
            self.stream >> 32,
        ]
        x = list(s)

        def quarter(a, b, c, d):
            x[a] = (x[a] + x[b]) & MASK32
            x[d] = self._rotl(x[d] ^ x[a], 16)
            x[c] = (x[c] + x[d]) & MASK32
            x[b] = self._rotl(x[b] ^ x[c], 12)
            x[a] = (x[a] + x[b]) & MASK32
            x[d] = self._rotl(x[d] ^ x[a], 8)
            x[c] = (x[c] + x[d]) & MASK32
            x[b] = self._rotl(x[b] ^ x[c], 7)

        for _ in range(4):  # 8 rounds: column then diagonal, four times
            quarter(0, 4, 8, 12)
            quarter(1, 5, 9, 13)
            quarter(2, 6, 10, 14)
            quarter(3, 7, 11, 15)
            quarter(0, 5, 10, 15)
            quarter(1, 6, 11, 12)
            quarter(2, 7, 8, 13)
            quarter(3, 4, 9, 14)
        self.counter += 1
        return [(a + b) & MASK32 for a, b in zip(x, s)]

    def next_u32(self):
        if not self.words:
            self.words = self._block()
        return self.words.pop(0)

    def next_u64(self):
        lo = self.next_u32()
        return (self.next_u32() << 32) | lo

    def uniform_f64(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


def fast_dllm_cases(reference: Path, model_dir: Path):
    load_package(reference / "fast_samplers" / "fast_dllm", "ref_fast_dllm")
    generate = importlib.import_module("ref_fast_dllm.generate")
    model = tiny_model("ref_fast_dllm", model_dir)
    prompts = padded_prompts(model_dir)
    samplers = {
        "none": generate.generate_pd,
        "prefix": generate.generate_with_prefix_cache,
        "dual": generate.generate_with_dual_cache,
    }
    common = dict(steps=GEN_LENGTH, gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH,
                  temperature=0.0, mask_id=model_facts(model_dir)[0])
    passes = Evaluations(model)
    out, cases = {}, {}
    for cache, sampler in samplers.items():
        for factor in FACTORS:
            name = f"factor_{cache}_{factor}"
            runs = [passes.of(lambda: sampler(model, row[None], factor=factor, **common)[0])
                    for row in prompts]
            out[name] = torch.stack([r for r, _ in runs])
            out[f"{name}_nfe"] = torch.tensor([n for _, n in runs])
            cases[name] = {"cache": cache, "factor": factor}
            try:
                sampler(model, prompts, factor=factor, **common)
                cases[name]["batched_reference"] = "ran"
            except IndexError as e:
                cases[name]["batched_reference"] = f"IndexError: {e}"
        for threshold in THRESHOLDS:
            name = f"threshold_{cache}_{threshold}"
            out[name], nfe = passes.of(
                lambda: sampler(model, prompts, threshold_pd=threshold, **common))
            out[f"{name}_nfe"] = torch.tensor([nfe])
            cases[name] = {"cache": cache, "threshold": threshold}
    return out, cases


def wino_cases(reference: Path, model_dir: Path):
    load_package(reference / "fast_samplers" / "wino", "ref_wino")
    generate = importlib.import_module("ref_wino.generate")
    model = tiny_model("ref_wino", model_dir)
    passes = Evaluations(model)
    out, cases = {}, {}
    for threshold, back in WINO:
        name = f"wino_{threshold}_{back}"
        runs = [passes.of(lambda: generate.generate_wino(
            model, row[None], gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH, temperature=0.0,
            mask_id=model_facts(model_dir)[0], threshold_wino=threshold,
            threshold_wino_back=back)[0]) for row in padded_prompts(model_dir)]
        out[name] = torch.stack([r for r, _ in runs])
        out[f"{name}_nfe"] = torch.tensor([n for _, n in runs])
        cases[name] = {"wino_threshold": threshold, "wino_threshold_back": back}
    return out, cases


def roar_cases(reference: Path, model_dir: Path):
    """ROAR through the trainer's own method, its order draws replaced by the Rust streams'."""
    methods = trainer_methods(reference / "DMPO" / "dmpo_trainer.py",
                              ["generate_and_compute_log_rnd", "sample_categorical_logits"])
    load_package(reference / "fast_samplers" / "fast_dllm", "ref_fast_dllm_roar")
    model = tiny_model("ref_fast_dllm_roar", model_dir)

    class StandIn:
        """What the method reads of the trainer: the model, two settings, the sampling helper."""

        def __init__(self):
            self.model = model
            self.args = types.SimpleNamespace(fp16=False, compute_ref_log_prob_elbo=True)

        sample_categorical_logits = staticmethod(methods.sample_categorical_logits)

    out, cases = {}, {}
    rand, zeros = torch.rand, torch.zeros
    for seed in ROAR_SEEDS:
        streams = [ChaCha8(seed, row) for row in range(len(PUZZLES))]

        def ordered_rand(*size, **kwargs):
            shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
            rows, n = shape
            return torch.tensor([[streams[r].uniform_f64() for _ in range(n)] for r in range(rows)],
                                dtype=torch.float64)

        def f32_zeros(*size, dtype=None, **kwargs):
            # The reference keeps the log-probabilities in bf16 beside a bf16 model; with the f32
            # model here they are kept in f32 (as the Rust sampler does).
            return zeros(*size, dtype=torch.float32 if dtype == torch.bfloat16 else dtype,
                         **kwargs)

        torch.rand, torch.zeros = ordered_rand, f32_zeros
        try:
            x, _, log_prob = methods.generate_and_compute_log_rnd(
                StandIn(), padded_prompts(model_dir), gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH,
                temperature=0.0, mask_id=model_facts(model_dir)[0])
        finally:
            torch.rand, torch.zeros = rand, zeros
        name = f"roar_seed{seed}"
        out[name] = x
        out[f"{name}_log_probs"] = log_prob.float()
        cases[name] = {"seed": seed, "log_probs": f"{name}_log_probs (f32 here, bf16 in the reference)"}
    return out, cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="the DMPO repository")
    parser.add_argument("--model", type=Path, default=Path("models/tiny-sudoku"))
    parser.add_argument("--out", type=Path, default=Path("fixtures/samplers"))
    args = parser.parse_args()
    tensors = {"prompts": padded_prompts(args.model)}
    cases = {}
    for make in [fast_dllm_cases, wino_cases, roar_cases]:
        t, c = make(args.reference, args.model)
        tensors.update(t)
        cases.update(c)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out / "samplers.safetensors")
    meta = {
        "made_by": "scripts/sampler_golden.py",
        "torch": torch.__version__,
        "transformers": importlib.import_module("transformers").__version__,
        "gen_length": GEN_LENGTH,
        "block_length": BLOCK_LENGTH,
        "temperature": 0.0,
        "model": str(args.model),
        "mask_id": model_facts(args.model)[0],
        "pad_id": model_facts(args.model)[1],
        "prompts": "left-padded with pad_id; the reference attends to the padding",
        "cases": cases,
    }
    (args.out / "samplers.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{len(cases)} cases -> {args.out / 'samplers.safetensors'}")


if __name__ == "__main__":
    main()
