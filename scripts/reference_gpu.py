#!/usr/bin/env python3
"""PyTorch reference figures for the operations our Rust toolkit times, on one device.

Measured (random weights in the geometry's dtype, made on the device; `--geometry` gives shapes):

  forward          logits at every position of [batch, seq] random ids, no grad (median of reps)
  rollout_exact    LLaDA's `generate.py` (T = 0, low confidence, full logits, f64 softmax)
  rollout_prefix   Fast-dLLM's prefix-cache sampler, as our `dllm-sample/src/generate.rs`
  rollout_dual     Fast-dLLM's dual-cache sampler, likewise
  update_*         one DMPO update on a PEFT LoRA: rollout-time ELBO under policy and reference,
                   importance weights, WDCE loss with gradient accumulation, one AdamW step; with
                   per-block gradient checkpointing (`update_checkpointing`) and without
                   (`update_plain`); the second of two updates is reported

Before timing, the same code runs in f32 on the tiny golden fixture and must reproduce it:
(1) the golden logits within 1e-4, (2) LLaDA's golden generations token for token, and, when
`--ours` gives our Rust outputs on the same model, (3) the prefix- and dual-cache generations and
(4) the WDCE loss and head gradient of `backend_check.rs::fixed_wdce_loss`. If a check
fails nothing is timed and the exit status is 1. `--out` is rewritten after every check and
every measurement, so a run cut short keeps what finished; a measurement that fails (e.g. out of
memory) is listed under `errors` and the next one runs.

Peak memory: on CUDA the driver-level use (total - free of `torch.cuda.mem_get_info()`, sampled
every 10 ms and at the end, after `empty_cache()`), as our side measures it; on the CPU the
process's resident high-water mark (VmHWM after resetting it through /proc/self/clear_refs).

Usage:

    python3 scripts/reference_gpu.py --geometry OUT/geometry.json --golden fixtures/llada-tiny \\
        --ours OUT/ours_tiny.json --out OUT/pytorch.json [--device cuda|cpu]
"""

import argparse
import gc
import json
import math
import os
import threading
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.checkpoint import checkpoint

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


# The model: LLaDA's HF module names, so that PEFT can wrap its linears.
class RMSNorm(nn.Module):
    def __init__(self, d, eps, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, dtype=dtype))

    def forward(self, x):
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x, cos, sin):
    """Rotate-half RoPE in f32 (LLaDA's `rope_full_precision`), cast back."""
    y = x.float()
    return (y * cos + rotate_half(y) * sin).to(x.dtype)


class Block(nn.Module):
    """LLaDA's `LLaDALlamaBlock`: pre-norm attention and SwiGLU MLP, bidirectional."""

    def __init__(self, cfg, dtype):
        super().__init__()
        d, hidden = cfg["d_model"], cfg["mlp_hidden_size"]
        self.nh = cfg["n_heads"]
        self.nkv = cfg.get("n_kv_heads") or self.nh
        self.hd = d // self.nh

        def lin(i, o):
            return nn.Linear(i, o, bias=False, dtype=dtype)

        self.attn_norm = RMSNorm(d, cfg["rms_norm_eps"], dtype)
        self.ff_norm = RMSNorm(d, cfg["rms_norm_eps"], dtype)
        self.q_proj = lin(d, self.nh * self.hd)
        self.k_proj = lin(d, self.nkv * self.hd)
        self.v_proj = lin(d, self.nkv * self.hd)
        self.attn_out = lin(self.nh * self.hd, d)
        self.ff_proj = lin(d, hidden)
        self.up_proj = lin(d, hidden)
        self.ff_out = lin(hidden, d)

    def forward(self, x, cos, sin, kv=None, start=0):
        """`x` [b, t, d] at positions `start..start+t`. `kv`: None; an empty list, which receives
        this pass's (rotated) keys and values; or a filled one, the whole sequence's cached keys
        and values, into which the span's fresh ones are spliced (our `cache.rs::splice`)."""
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.nkv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None and not kv:
            kv.extend((k, v))
        elif kv:
            ck, cv = kv
            k = torch.cat((ck[:, :, :start], k, ck[:, :, start + t:]), dim=2)
            v = torch.cat((cv[:, :, :start], v, cv[:, :, start + t:]), dim=2)
        if self.nkv != self.nh:
            k = k.repeat_interleave(self.nh // self.nkv, dim=1)
            v = v.repeat_interleave(self.nh // self.nkv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + self.attn_out(a.transpose(1, 2).reshape(b, t, self.nh * self.hd))
        m = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(m)) * self.up_proj(m))


class Llada(nn.Module):
    """`LLaDAModelLM`: `model.transformer.{wte, blocks.N, ln_f, ff_out}`."""

    def __init__(self, cfg, dtype):
        super().__init__()
        self.cfg = cfg
        self.checkpointing = False
        d, vocab = cfg["d_model"], cfg.get("embedding_size") or cfg["vocab_size"]
        parts = {
            "wte": nn.Embedding(vocab, d, dtype=dtype),
            "blocks": nn.ModuleList(Block(cfg, dtype) for _ in range(cfg["n_layers"])),
            "ln_f": RMSNorm(d, cfg["rms_norm_eps"], dtype),
        }
        if not cfg.get("weight_tying", False):
            parts["ff_out"] = nn.Linear(d, vocab, bias=False, dtype=dtype)
        self.model = nn.Module()
        self.model.transformer = nn.ModuleDict(parts)

    def head_weight(self):
        tr = self.model.transformer
        return tr["ff_out"].weight if "ff_out" in tr else tr["wte"].weight

    def rope(self, start, length, device):
        hd = self.cfg["d_model"] // self.cfg["n_heads"]
        inv = 1.0 / (self.cfg["rope_theta"] ** (torch.arange(0, hd, 2, device=device).float() / hd))
        pos = torch.arange(start, start + length, device=device).float()
        freqs = torch.outer(pos, inv)
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()

    def forward(self, ids, cache=None, start=0, logits_at=slice(None)):
        """Logits `[b, n, vocab]` of the ids `[b, t]` placed at `start`, at the input positions
        `logits_at` only (the head runs there only). `cache`: an empty list to fill with every
        layer's keys/values, or a filled one to read (then `ids` is a span of that sequence)."""
        tr = self.model.transformer
        cos, sin = self.rope(start, ids.shape[1], ids.device)
        x = tr["wte"](ids)
        if cache is not None and not cache:
            cache.extend([] for _ in tr["blocks"])
        for i, block in enumerate(tr["blocks"]):
            if self.checkpointing and torch.is_grad_enabled() and cache is None:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, None if cache is None else cache[i], start)
        x = tr["ln_f"](x[:, logits_at])
        return F.linear(x, self.head_weight())


def build_model(cfg, device, dtype, state=None, seed=0):
    """The model on `device` in `dtype`, built on `meta` first (no host copy): `state` loaded, or
    random weights drawn in place, N(0, 0.02) for linears and embeddings, norms 1."""
    with torch.device("meta"):
        model = Llada(cfg, dtype)
    model = model.to_empty(device=device)
    if state is not None:
        model.load_state_dict(state, strict=True)
        return model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or ".ln_f." in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


# Samplers.
def num_transfer_tokens(mask_index, steps):
    """LLaDA's `get_num_transfer_tokens`: `[b, steps]`, the remainder on the first steps."""
    n = mask_index.sum(dim=1, keepdim=True)
    base, rem = n // steps, n % steps
    extra = torch.arange(steps, device=n.device)[None, :] < rem
    return base + extra.long()


@torch.no_grad()
def llada_generate(model, prompt, steps, gen_length, block_length, mask_id):
    """LLaDA `generate.py`, temperature 0, low-confidence remasking, no CFG, step for step."""
    b, p = prompt.shape
    x = torch.full((b, p + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :p] = prompt
    blocks = gen_length // block_length
    per_block = steps // blocks
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=x.device)
    for nb in range(blocks):
        hi = p + (nb + 1) * block_length
        ntt = num_transfer_tokens(x[:, hi - block_length:hi] == mask_id, per_block)
        for i in range(per_block):
            mask_index = x == mask_id
            logits = model(x)
            x0 = torch.argmax(logits, dim=-1)
            prob = F.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(prob, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, hi:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, x0_p, neg_inf)
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(b):
                _, idx = torch.topk(conf[j], k=int(ntt[j, i]))
                transfer[j, idx] = True
            x[transfer] = x0[transfer]
    return x


def commit(x, lo, end, logits, k, mask_id):
    """Our sampler's `commit` (Fast-dLLM's `get_transfer_index`, T = 0, low confidence): per row
    the `k` masked positions of `[lo, end)` whose argmax has the highest softmax probability,
    ties to the earlier position. `logits` `[b, end - lo, vocab]`, `k` `[b]`."""
    x0 = logits.argmax(-1)
    prob = F.softmax(logits.to(torch.float64), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
    span = x[:, lo:end]
    masked = span == mask_id
    conf = torch.where(masked, prob, torch.full_like(prob, -math.inf))
    order = conf.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=x.device)
                                            .expand_as(order).contiguous())
    x[:, lo:end] = torch.where(masked & (rank < k[:, None]), x0, span)


@torch.no_grad()
def cached_generate(model, prompt, steps, gen_length, block_length, mask_id, kind):
    """Fast-dLLM's `generate_with_{prefix,dual}_cache` as our `generate.rs::Sampler::run`: the
    first step of a block runs the whole sequence and refills the cache (logits at `[lo, end)`);
    later steps run the span `[start, len)` (prefix) or `[start, end)` (dual), other positions'
    keys/values read from that cache; a step whose `lo` (first still-masked completion position,
    over the batch) lies before the block runs the whole model uncached. As ours, the head runs
    at `[lo, end)` only (Fast-dLLM's code computes the logits of its whole input)."""
    b, p = prompt.shape
    total = p + gen_length
    x = torch.full((b, total), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :p] = prompt
    blocks = gen_length // block_length
    per_block = max(1, steps // blocks)
    cache = []
    for nb in range(blocks):
        start = p + nb * block_length
        end = start + block_length
        ntt = num_transfer_tokens(x[:, start:end] == mask_id, per_block)
        for s in range(per_block):
            earlier = (x[:, p:start] == mask_id).any(0).nonzero()
            lo = p + int(earlier[0]) if len(earlier) else start
            if s == 0:
                cache = []
                logits = model(x, cache=cache, logits_at=slice(lo, end))
            elif lo == start:
                span_end = end if kind == "dual" else total
                logits = model(x[:, start:span_end], cache=cache, start=start,
                               logits_at=slice(0, end - start))
            else:
                logits = model(x, logits_at=slice(lo, end))
            commit(x, lo, end, logits, ntt[:, s], mask_id)
    return x


# DMPO: ELBO, importance weights, WDCE (crates/dmpo-core/src/{masks,elbo,weights,wdce}.rs).
def sample_masks(n, gen_len, replicates, gen):
    """`ReplicateMasks::sample` with the defaults: `[K, n, L]` (replicate-major), K/2 drawn with
    rate 0.1 + 0.9 u, the other K/2 their complements; positions after EOS masked too."""
    u = torch.rand(replicates // 2, n, 1, generator=gen, dtype=torch.float64)
    drawn = torch.rand(replicates // 2, n, gen_len, generator=gen, dtype=torch.float64)
    drawn = drawn < 0.1 + 0.9 * u
    return torch.cat((drawn, ~drawn), dim=0)


def masked_logprob_sums(model, seqs, masks, prompt_len, mask_id):
    """`elbo.rs::masked_logprob_sums` over the `K * n` replicate rows (replicate-major, row
    `k * n + i` is sample `i`) of samples `seqs` `[n, P + L]` with masks `[K, n, L]`:
    `s_r = sum_{j in M_r} log p(x_j | x~_r)`, and `m_r = max(1, |M_r|)`, both `[K * n]`. The
    head and the f32 log-softmax run on the completion only."""
    k, n, gen_len = masks.shape
    rows, masks = seqs.repeat(k, 1), masks.reshape(k * n, gen_len)
    noisy = rows.clone()
    noisy[:, prompt_len:] = torch.where(masks, mask_id, rows[:, prompt_len:])
    logits = model(noisy, logits_at=slice(prompt_len, None))
    logp = torch.log_softmax(logits.float(), dim=-1)
    tok = logp.gather(-1, rows[:, prompt_len:, None]).squeeze(-1)
    s = torch.where(masks, tok, torch.zeros_like(tok)).sum(-1)
    return s, masks.sum(-1).clamp(min=1).double()


def elbo(model, seqs, masks, prompt_len, mask_id):
    """`ell_i = (1/K) sum_k (L / m_ik) s_ik` (`elbo.rs::ell_from_row_sums`), `[n]` f64."""
    k, n, gen_len = masks.shape
    s, m = masked_logprob_sums(model, seqs, masks, prompt_len, mask_id)
    return (gen_len / (k * m) * s.double()).view(k, n).sum(0)


def advantages(ell_cur, ell_ref, rewards, group_size, alpha=0.04, coeff=1.0, strength=1.0):
    """`weights.rs::rollout_weights` + negative centering: `A = w+ - strength * w-`."""
    out = []
    for g in range(0, len(rewards), group_size):
        lr = ell_ref[g:g + group_size] - ell_cur[g:g + group_size]
        r = rewards[g:g + group_size]
        r = r - r.mean()
        w_plus = torch.softmax(coeff * (lr + r / alpha), 0)
        w_minus = torch.softmax(coeff * (lr - r / alpha), 0)
        out.append(w_plus - strength * w_minus)
    return torch.cat(out)


def wdce_loss(model, seqs, masks, adv, prompt_len, mask_id):
    """`wdce.rs::wdce_loss_with_masks`: `sum_r -A_i(r) / (K m_r) * s_r` (a sum over samples)."""
    k = masks.shape[0]
    s, m = masked_logprob_sums(model, seqs, masks, prompt_len, mask_id)
    coef = -adv.to(s.device).repeat(k) / (k * m.to(s.device))
    return (s * coef.to(s.dtype)).sum()


def dmpo_update(model, opt, seqs, rewards, prompt_len, upd, mb, mask_id, gen):
    """One DMPO update on a PEFT model: (a) rollout-time ELBO under the policy and the reference
    (adapter off) on shared masks, no grad, `micro_batch` samples (x K replicates) per forward;
    (b) advantages; (c) fresh masks, WDCE per micro-batch scaled by u/N (loss units of u = 4
    rows, docs/algorithm.md §5.2), backward, clip to `max_grad_norm`, one AdamW step."""
    n, gen_len = seqs.shape[0], seqs.shape[1] - prompt_len
    k = upd["replicates"]
    dev = seqs.device
    masks = sample_masks(n, gen_len, k, gen).to(dev)
    ell_cur = torch.zeros(n, dtype=torch.float64)
    ell_ref = torch.zeros(n, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, n, mb):
            rows, mk = seqs[i:i + mb], masks[:, i:i + mb]
            ell_cur[i:i + mb] = elbo(model, rows, mk, prompt_len, mask_id).cpu()
            with model.disable_adapter():
                ell_ref[i:i + mb] = elbo(model, rows, mk, prompt_len, mask_id).cpu()
    adv = advantages(ell_cur, ell_ref, rewards, upd["group_size"])
    masks = sample_masks(n, gen_len, k, gen).to(dev)
    unit = min(upd.get("loss_unit_rows", 4) or n, n)
    total = 0.0
    for i in range(0, n, mb):
        loss = wdce_loss(model, seqs[i:i + mb], masks[:, i:i + mb], adv[i:i + mb], prompt_len,
                         mask_id) * (unit / n)
        loss.backward()
        total += float(loss.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, upd.get("max_grad_norm", 0.2))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


# Checks on the golden tiny model (f32).
def check_logits(model, golden):
    with torch.no_grad():
        got = model(golden["input_ids"]).float().cpu()
    diff = float((got - golden["logits"]).abs().max())
    return diff <= 1e-4, f"max |diff| {diff:.2e} (tolerance 1e-4)"


def check_generate(model, golden, meta, mask_id):
    bad, total = [], 0
    for case, c in meta["generate"]["cases"].items():
        out = llada_generate(model, golden["gen_prompts"], c["steps"], c["gen_length"],
                             c["block_length"], mask_id).cpu()
        want = golden[f"{case}_out"]
        total += 1
        if not torch.equal(out, want):
            bad.append(f"{case}: {int((out != want).sum())} tokens differ")
    return not bad, "; ".join(bad) or f"{total} cases token-exact"


def check_cached(model, golden, ours, kind, mask_id):
    prompts = golden["gen_prompts"]
    got = cached_generate(model, prompts, 16, 16, 8, mask_id, kind)[:, prompts.shape[1]:]
    got = got.cpu().tolist()
    if ours is None:
        return None, f"no --ours file; pytorch: {got}"
    want = ours[f"{kind}_generation"]
    diff = sum(a != b for r, w in zip(got, want) for a, b in zip(r, w))
    return got == want, f"{diff} of 32 tokens differ; pytorch {got}, ours {want}"


def check_wdce(model, golden, ours, mask_id):
    """`backend_check.rs::fixed_wdce_loss`: targets, prompt 8, masks (i*7)%3 == 0 over
    `[K=2, n=2, L=16]`, A = w+ - w- with w+ [0.7, 0.3], w- [0.2, 0.8]."""
    dev = model.head_weight().device
    seqs = golden["targets"].to(dev)
    masks = torch.tensor([(i * 7) % 3 == 0 for i in range(2 * 2 * 16)], device=dev).view(2, 2, 16)
    adv = torch.tensor([0.7 - 0.2, 0.3 - 0.8], dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = wdce_loss(model, seqs, masks, adv, 8, mask_id)
        loss.backward()
    value, grad = float(loss.detach()), float(model.head_weight().grad.double().abs().sum())
    model.zero_grad(set_to_none=True)
    mine = f"pytorch loss {value:.8g}, sum|d loss/d head| {grad:.8g}"
    if ours is None:
        return None, f"no --ours file; {mine}"
    want_l, want_g = ours["wdce_loss"], ours["wdce_grad_head_abs_sum"]
    rel_l = abs(value - want_l) / max(abs(want_l), 1e-30)
    rel_g = abs(grad - want_g) / max(abs(want_g), 1e-30)
    detail = (f"{mine}; ours {want_l:.8g}, {want_g:.8g}; "
              f"relative diff {rel_l:.1e} (tol 1e-4), {rel_g:.1e} (tol 1e-3)")
    return rel_l <= 1e-4 and rel_g <= 1e-3, detail


# Timing and memory.
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """`(seconds, fn())`, the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


class PeakMemory:
    """Peak memory over a `with` block (see the module docstring)."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _used(self):
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._used())

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.peak = self._used()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._used())
        else:
            with open("/proc/self/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            self.peak = kb * 1024
        return False

    def report(self, detail):
        """`peak_bytes`, `memory` (the method) and `detail` (with the allocator's peaks on CUDA)."""
        if self.device.type == "cuda":
            alloc = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
            return {"peak_bytes": self.peak,
                    "memory": "driver: peak of mem_get_info total-free, 10 ms samples + end",
                    "detail": f"{detail}; max_memory_allocated {alloc}, "
                              f"max_memory_reserved {reserved}"}
        return {"peak_bytes": self.peak, "memory": "process VmHWM (clear_refs 5 before)",
                "detail": detail}


def measure_forward(model, geo, device, gen, mask_id):
    fw = geo["forward"]
    ids = torch.randint(0, mask_id, (fw["batch"], fw["seq"]), generator=gen).to(device)
    with torch.no_grad():
        model(ids)
        with PeakMemory(device) as mem:
            runs = [timed(lambda: model(ids), device)[0] for _ in range(geo.get("reps", 3))]
    s = sorted(runs)[len(runs) // 2]
    return dict(seconds=s, tokens_per_s=ids.numel() / s,
                **mem.report(f"median of {len(runs)} runs {['%.4f' % r for r in runs]}"))


def measure_rollout(model, geo, device, prompt, kind, mask_id):
    ro = geo["rollout"]
    batch = prompt.repeat(ro["batch"], 1)
    with torch.no_grad():
        model(torch.full((ro["batch"], prompt.shape[1] + ro["gen_length"]), mask_id,
                         device=device))
    args = (model, batch, ro["steps"], ro["gen_length"], ro["block_length"], mask_id)
    with PeakMemory(device) as mem:
        if kind == "exact":
            s, _ = timed(lambda: llada_generate(*args), device)
        else:
            s, _ = timed(lambda: cached_generate(*args, kind), device)
    detail = (f"{ro['batch']} x (prompt {prompt.shape[1]} + gen {ro['gen_length']}), block "
              f"{ro['block_length']}, {ro['steps']} steps")
    return dict(seconds=s, tokens_per_s=ro["batch"] * ro["gen_length"] / s, **mem.report(detail))


def measure_update(peft_model, geo, device, prompt, gen, mask_id, checkpointing):
    upd = geo["update"]
    n, k = upd["group_size"], upd["replicates"]
    # The plan's micro_batch for each setting (ours: `gpu-check geometry`).
    mb = upd["micro_batch"] if checkpointing else upd.get("micro_batch_plain", upd["micro_batch"])
    peft_model.get_base_model().checkpointing = checkpointing
    completion = torch.randint(0, mask_id, (n, upd["gen_length"]), generator=gen).to(device)
    seqs = torch.cat((prompt.repeat(n, 1), completion), dim=1)
    rewards = torch.tensor([1.0 - i % 2 for i in range(n)], dtype=torch.float64)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=upd["lr"], betas=tuple(upd["betas"]), eps=upd["eps"],
                            weight_decay=upd["weight_decay"])
    peft_model.train()
    with torch.no_grad():
        peft_model(seqs[:mb].repeat(k, 1))

    def step():
        return dmpo_update(peft_model, opt, seqs, rewards, prompt.shape[1], upd, mb, mask_id, gen)

    try:
        with PeakMemory(device) as mem:
            first, loss1 = timed(step, device)
            s, loss2 = timed(step, device)
    finally:
        peft_model.eval()
        peft_model.zero_grad(set_to_none=True)
    return dict(seconds=s, tokens_per_s=None, **mem.report(
        f"second of two updates (first {first:.4f} s); {n} rows x ({prompt.shape[1]} + "
        f"{upd['gen_length']}), K {k}, micro-batch {mb}, checkpointing {checkpointing}; WDCE "
        f"{loss1:.4g}, {loss2:.4g}; {sum(p.numel() for p in params)} trainable parameters"))


# Driver.
def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return f"cpu: {names[0] if names else 'unknown'} x{os.cpu_count()}"


def save(path, result):
    """Writes `result` atomically (a run cut short leaves the last whole file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


def run_checks(result, args, device, save_now):
    cfg = json.load(open(os.path.join(args.golden, "config.json")))
    meta = json.load(open(os.path.join(args.golden, "golden_meta.json")))
    golden = load_file(os.path.join(args.golden, "golden.safetensors"))
    golden.update({k: golden[k].to(device) for k in ("input_ids", "gen_prompts", "targets")})
    ours = json.load(open(args.ours)) if args.ours and os.path.exists(args.ours) else None
    state = load_file(os.path.join(args.golden, "model.safetensors"))
    model = build_model(cfg, device, torch.float32, state=state)
    mask_id = cfg["mask_token_id"]
    checks = [
        ("golden logits (f32)", lambda: check_logits(model, golden)),
        ("LLaDA generate vs golden (f32)", lambda: check_generate(model, golden, meta, mask_id)),
        ("prefix-cache generation vs ours (f32)",
         lambda: check_cached(model, golden, ours, "prefix", mask_id)),
        ("dual-cache generation vs ours (f32)",
         lambda: check_cached(model, golden, ours, "dual", mask_id)),
        ("WDCE loss and head gradient vs ours (f32)",
         lambda: check_wdce(model, golden, ours, mask_id)),
    ]
    for name, fn in checks:
        try:
            passed, detail = fn()
        except Exception as e:  # noqa: BLE001 - a crash is a failed check, recorded
            passed, detail = False, f"{type(e).__name__}: {e}"
            result["errors"].append(f"{name}: {type(e).__name__}: {e}")
        result["checks"].append({"name": name, "passed": passed, "detail": detail})
        print(f"check {name}: {passed} ({detail})", flush=True)
        save_now()
    return all(c["passed"] is not False for c in result["checks"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--geometry", required=True)
    ap.add_argument("--golden", default="fixtures/llada-tiny")
    ap.add_argument("--ours")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", choices=["cuda", "cpu"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":  # an explicit index, also for the sampling thread
        device = torch.device("cuda", torch.cuda.current_device())
    torch.set_float32_matmul_precision("highest")
    if args.threads:
        torch.set_num_threads(args.threads)
    geo = json.load(open(args.geometry))
    result = {"side": "pytorch", "torch": torch.__version__, "device": device_name(device),
              "dtype": geo["dtype"], "scale": geo.get("scale"),
              "threads": torch.get_num_threads(), "checks": [],
              "measurements": {}, "errors": []}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save_now():
        save(args.out, result)

    save_now()

    if not run_checks(result, args, device, save_now):
        print(f"a check failed: nothing timed; wrote {args.out}")
        raise SystemExit(1)
    gc.collect()

    cfg = json.load(open(geo["config"]))
    mask_id = cfg["mask_token_id"]
    dtype = DTYPES[geo["dtype"]]
    gen = torch.Generator().manual_seed(args.seed)
    model = build_model(cfg, device, dtype, seed=args.seed)
    prompt, upd_prompt = (
        torch.randint(0, mask_id, (1, geo[op]["prompt_len"]), generator=gen).to(device)
        for op in ("rollout", "update"))

    def record(name, fn, *fn_args):
        try:
            result["measurements"][name] = fn(*fn_args)
            m = result["measurements"][name]
            print(f"{name}: {m['seconds']:.4f} s, peak {m['peak_bytes'] / 2**30:.2f} GiB",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: recorded, next one runs
            result["errors"].append(f"{name}: {type(e).__name__}: {e}")
            print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save_now()

    record("forward", measure_forward, model, geo, device, gen, mask_id)
    for kind in ("exact", "prefix", "dual"):
        record(f"rollout_{kind}", measure_rollout, model, geo, device, prompt, kind, mask_id)

    try:
        from peft import LoraConfig, get_peft_model

        lora = geo["update"]["lora"]
        targets = lora["targets"]
        if "ff_out" in targets:  # a bare "ff_out" would also match the LM head
            targets = r".*\.blocks\.\d+\.(" + "|".join(targets) + ")"
        peft_model = get_peft_model(model, LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=targets))
    except Exception as e:  # noqa: BLE001
        result["errors"].append(f"peft: {type(e).__name__}: {e}")
        save_now()
        raise SystemExit(1)
    for name, ckpt in (("update_checkpointing", True), ("update_plain", False)):
        record(name, measure_update, peft_model, geo, device, upd_prompt, gen, mask_id, ckpt)
    print(f"wrote {args.out}")
    if result["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
