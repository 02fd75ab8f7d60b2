"""Fast sampling for Qwen VL policies: one HF prefill, then a static-shape text decode loop (CUDA-graphed).

Why not ``model.generate``: at GRPO batch sizes (32 rows) HF generate spends ~30 ms per token on a 2B model,
almost all of it Python and kernel-launch overhead (plus, under LoRA, three extra small kernels per
projection). Here the prompts (8 images, not 32) go once through the real model; their KV is copied
``num_generations`` times into a preallocated cache, and every later token runs one replay of a CUDA
graph of the text decoder (embedding → layers with LoRA active → norm → lm_head). The graph reads the
live parameter tensors, so optimizer steps (in place) are seen without recapture or weight copies.

The sampler's log-probs (``logprobs=True``) are those of the model's distribution at the sampling temperature,
before top-p and token bans: exactly what the learner recomputes for the same tokens (``completion_logprobs``),
so their difference measures sampler/learner mismatch only.

Decode attention is done per KV head with the query heads as the "query length" (no ``repeat_kv`` copy of
the cache) over the whole static cache under an additive mask (left padding and unwritten slots masked).
On CPU the same loop runs eagerly, which is what the CPU tests check against HF generate.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlm_rl.models.compile_cache import use_compile_cache
from vlm_rl.models.families import FAST_DECODE_FAMILIES
from vlm_rl.models.lora_merge import merged_lora
from vlm_rl.rollout.fp8 import Fp8Decoder

_ATTN_NAME = "vlmrl_decode_gqa"


def unwrap_causal_lm(model):
    """The ``...ForConditionalGeneration`` inside a DeepSpeed engine and/or a PEFT wrapper."""
    model = getattr(model, "module", model)  # DeepSpeed engine
    if hasattr(model, "get_base_model"):  # PeftModel
        model = model.get_base_model()
    return model


def supports_fast_decode(model) -> bool:
    """True for the families in FAST_DECODE_FAMILIES (same layer call, multimodal RoPE with text-only decode
    positions; checked against HF generate on CPU, tests/rollout/test_fast_decode.py, and GPU, tests/gpu);
    other models fall back to HF generate."""
    lm = unwrap_causal_lm(model)
    return getattr(lm.config, "model_type", None) in FAST_DECODE_FAMILIES


def _decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA for one new token: query heads of a KV group become the query axis, so K/V are never repeated."""
    b, h, q_len, d = query.shape
    kvh = key.shape[1]
    q = query.reshape(b, kvh, (h // kvh) * q_len, d)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(b, h, q_len, d).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTN_NAME, _decode_attention)


class _StaticKV:
    """The ``cache`` the decoder layers write into: slot ``write_pos`` of preallocated [B, KVH, L, D] buffers."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], write_pos: torch.Tensor):
        self.keys, self.values, self.write_pos = keys, values, write_pos

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.keys[layer_idx].index_copy_(2, self.write_pos, key_states)
        self.values[layer_idx].index_copy_(2, self.write_pos, value_states)
        return self.keys[layer_idx], self.values[layer_idx]


@dataclass
class _State:
    """Static buffers of one (rows, cache length) shape, plus its captured graph."""

    rows: int
    length: int
    kv: _StaticKV
    mask: torch.Tensor  # [B, 1, 1, L] additive
    tokens: torch.Tensor  # [B] token fed at this step
    pos: torch.Tensor  # [B] its rotary position
    write_pos: torch.Tensor  # [1] its cache slot
    logits: torch.Tensor  # [B, V] output
    graph: torch.cuda.CUDAGraph | None = None
    param_ptrs: tuple = ()


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
                  banned: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from ``softmax(logits / T)`` (nucleus-filtered when ``top_p < 1``); exponential race."""
    scores = logits.to(torch.float32, copy=True)  # never modify the caller's logits
    if banned is not None and banned.numel():
        scores.index_fill_(-1, banned, float("-inf"))
    if temperature <= 0:
        return scores.argmax(dim=-1)
    if temperature != 1.0:
        scores = scores / temperature
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_scores.softmax(dim=-1) > top_p  # keep the token that crosses top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
    probs = scores.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1)


class StaticDecoder:
    """Samples completions for a batch of (image) prompts from a Qwen VL model (PEFT/DeepSpeed-wrapped or not).

    ``generate`` returns ``[prompts * num_generations, max_new_tokens]`` token ids (rows grouped by prompt;
    ``pad_id`` after a row's first end token) and the number of decode steps run; with ``logprobs=True``
    ``last_logprobs`` holds each sampled token's log-prob at the sampling temperature (same shape, float32).
    """

    def __init__(self, model, *, eos_ids: list[int], pad_id: int, suppress_ids: list[int] | tuple = (),
                 use_cuda_graph: bool | None = None, length_multiple: int = 64, compile_step: bool = False,
                 keep_cache: bool = False, merge_lora: bool = True, fp8: bool = False):
        self.model = model
        self.lm = unwrap_causal_lm(model)
        if not supports_fast_decode(model):
            raise ValueError(f"model_type: fast decode supports {', '.join(FAST_DECODE_FAMILIES)}, "
                             f"got {self.lm.config.model_type!r}")
        self.text = self.lm.model.language_model
        self.layers = list(self.text.layers)
        self.attn_config = self.layers[0].self_attn.config
        self.eos_ids = list(eos_ids)
        self.pad_id = pad_id
        self.suppress_ids = list(suppress_ids)
        self.use_cuda_graph = use_cuda_graph
        self.length_multiple = length_multiple
        self.keep_cache = keep_cache
        self.merge_lora = merge_lora
        self.compile_step = compile_step
        self._compiled = None
        self.mode = "eager"
        self._state: _State | None = None
        self._cache_kw = "cache" if "cache" in inspect.signature(self.layers[0].forward).parameters \
            else "past_key_values"
        self.last_timings: dict[str, float] = {}
        self.last_logprobs: torch.Tensor | None = None
        self.merged_modules = 0
        # FP8 rollouts (rollout/fp8.py): the decoder's projections in e4m3, refreshed from the folded weights
        self.fp8 = Fp8Decoder(self.layers) if fp8 else None
        if self.fp8 is not None and self.fp8.count == 0:  # e.g. partitioned weights: say so, don't claim FP8
            logging.getLogger(__name__).warning("rollout_dtype=fp8: no projection of this decoder can be "
                                                "quantized (empty or odd-shaped weights); sampling in its dtype")
            self.fp8 = None
        _register_attention()

    # -- public --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, enc, num_generations: int, max_new_tokens: int, *, temperature: float = 1.0,
                 top_p: float = 1.0, min_new_tokens: int = 0, generator: torch.Generator | None = None,
                 logprobs: bool = False) -> tuple[torch.Tensor, int]:
        device = enc["input_ids"].device
        graphs = device.type == "cuda" if self.use_cuda_graph is None else self.use_cuda_graph
        was_training = self.lm.training
        self.model.eval()
        clock = _Clock(device)
        try:  # LoRA folded into the base weights for prefill and decode, restored exactly afterwards
            merged = merged_lora(self.model, enabled=self.merge_lora)
            with merged:
                self.merged_modules = merged.count
                clock.lap("merge")
                with self.fp8.active() if self.fp8 is not None else nullcontext():
                    clock.lap("quantize")
                    result = self._generate(enc, num_generations, max_new_tokens, temperature, top_p,
                                            min_new_tokens, generator, graphs, clock, logprobs)
                clock.lap("decode")
            clock.lap("unmerge")
            self.last_timings = clock.laps
            return result
        finally:
            if not self.keep_cache:  # the static KV would otherwise sit in memory through the training phase
                self._state = None
            if was_training:
                self.model.train()

    def release(self) -> None:
        """Drop the static cache and graph (frees their GPU memory, e.g. before a training phase)."""
        self._state = None

    # -- internals -----------------------------------------------------------------------------
    def _generate(self, enc, G, T, temperature, top_p, min_new_tokens, generator, graphs, clock, logprobs):
        device = enc["input_ids"].device
        n, prompt_len = enc["input_ids"].shape
        rows = n * G
        lm_kwargs = {k: v for k, v in enc.items() if k != "prompt_length"}
        out = self.model(**lm_kwargs, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        first_logits = out.logits[:, -1].repeat_interleave(G, dim=0)
        deltas = self.lm.model.rope_deltas
        if deltas is None:
            deltas = torch.zeros(n, 1, dtype=torch.long, device=device)
        length = -(-(prompt_len + T) // self.length_multiple) * self.length_multiple
        clock.lap("prefill")
        state = self._state_for(rows, length, device, graphs)
        clock.lap("capture")  # static buffers (+ CUDA graph capture) for this shape; ~0 when kept

        # Load the prompts' KV (each prompt's once, into its G rows) and the mask of real prompt tokens.
        for i, layer_cache in enumerate(_cache_layers(cache)):
            k, v = layer_cache
            state.kv.keys[i][:, :, :prompt_len].copy_(k.repeat_interleave(G, dim=0))
            state.kv.values[i][:, :, :prompt_len].copy_(v.repeat_interleave(G, dim=0))
        del cache, out
        neg = torch.finfo(state.mask.dtype).min
        state.mask.fill_(neg)
        prompt_ok = enc["attention_mask"].bool().repeat_interleave(G, dim=0)
        state.mask[:, 0, 0, :prompt_len].masked_fill_(prompt_ok, 0.0)
        # HF's rule: a new token's rotary position is (real prompt tokens + tokens so far) + the prompt's delta.
        real = enc["attention_mask"].sum(dim=1) + deltas.view(-1).to(device)
        state.pos.copy_(real.repeat_interleave(G))
        state.write_pos.fill_(prompt_len)

        eos = torch.tensor(self.eos_ids, device=device, dtype=torch.long)
        suppress = torch.tensor(self.suppress_ids, device=device, dtype=torch.long)
        with_eos = torch.cat([suppress, eos])
        result = torch.full((rows, T), self.pad_id, dtype=torch.long, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        lp = torch.zeros(rows, T, dtype=torch.float32, device=device) if logprobs else None
        self.last_logprobs = lp
        scale = temperature if temperature > 0 else 1.0  # greedy: the model's own distribution

        def pick(logits: torch.Tensor, t: int) -> None:
            banned = with_eos if t < min_new_tokens else suppress
            nxt = sample_tokens(logits, temperature, top_p, generator, banned)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            result[:, t] = nxt
            if lp is not None:
                scores = logits.float() / scale if scale != 1.0 else logits.float()
                lp[:, t] = scores.gather(-1, nxt[:, None]).squeeze(-1) - scores.logsumexp(dim=-1)
            done.logical_or_(torch.isin(nxt, eos))
            state.tokens.copy_(nxt)

        pick(first_logits, 0)
        steps = 0
        for t in range(1, T):
            if t % 32 == 0 and bool(done.all()):
                break
            self._run_step(state)
            steps += 1
            state.pos.add_(1)
            state.write_pos.add_(1)
            pick(state.logits, t)
        return result, steps

    def _state_for(self, rows: int, length: int, device, graphs: bool) -> _State:
        ptrs = tuple(p.data_ptr() for p in self.model.parameters()) if graphs else ()
        s = self._state
        if s is not None and s.rows == rows and s.length == length and s.param_ptrs == ptrs:
            return s
        self._state = None  # free the old buffers and graph before allocating new ones
        text_cfg = self.attn_config
        dtype = self.lm.lm_head.weight.dtype
        kvh, hd = text_cfg.num_key_value_heads, self.layers[0].self_attn.head_dim
        write_pos = torch.zeros(1, dtype=torch.long, device=device)
        kv = _StaticKV(
            [torch.zeros(rows, kvh, length, hd, dtype=dtype, device=device) for _ in self.layers],
            [torch.zeros(rows, kvh, length, hd, dtype=dtype, device=device) for _ in self.layers],
            write_pos,
        )
        s = _State(
            rows=rows, length=length, kv=kv,
            mask=torch.zeros(rows, 1, 1, length, dtype=dtype, device=device),
            tokens=torch.full((rows,), self.pad_id, dtype=torch.long, device=device),
            pos=torch.zeros(rows, dtype=torch.long, device=device), write_pos=write_pos,
            logits=torch.zeros(rows, self.lm.lm_head.weight.shape[0], dtype=dtype, device=device),
            param_ptrs=ptrs,
        )
        if graphs:
            self._capture(s)
        self._state = s
        return s

    def _step(self, s: _State) -> None:
        """One decode step on the static buffers (what the CUDA graph records)."""
        s.mask.index_fill_(3, s.write_pos, 0.0)
        h = self.text.embed_tokens(s.tokens)[:, None, :]
        position_ids = s.pos.view(1, -1, 1).expand(3, -1, 1)
        position_embeddings = self.text.rotary_emb(h, position_ids)
        for layer in self.layers:
            h = layer(h, position_embeddings=position_embeddings, attention_mask=s.mask,
                      **{self._cache_kw: s.kv})
        h = self.text.norm(h)
        s.logits.copy_(self.lm.lm_head(h[:, 0]))

    def _run_step(self, s: _State) -> None:
        if s.graph is not None:
            s.graph.replay()
            return
        with _attention(self.attn_config):
            self._step(s)

    def _capture(self, s: _State) -> None:
        """Record one step as a CUDA graph; with ``compile_step`` the step is first fused by torch.compile
        (far fewer, larger kernels: RMSNorm, rotary and LoRA epilogues), falling back to eager on failure."""
        step, compiled = self._step, False
        if self.compile_step:
            try:
                if self._compiled is None:
                    use_compile_cache()  # kept across runs under $VLM_RL_CACHE (models/compile_cache.py)
                    self._compiled = torch.compile(self._step, dynamic=False)
                self._warm(s, self._compiled)
                step, compiled, self.mode = self._compiled, True, "compiled+graph"
            except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager graph still works
                logging.getLogger(__name__).warning("torch.compile of the decode step failed (%s); eager", exc)
                self.compile_step, self._compiled = False, None
        if not compiled:  # (a bound method is a new object on each access: compare a flag, not identity)
            self._warm(s, step)
            self.mode = "graph"
        # Warm-up and capture write slot write_pos (=0 here); every real step rewrites its own slot first.
        with _attention(self.attn_config):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step(s)
        s.graph = graph

    def _warm(self, s: _State, step) -> None:
        with _attention(self.attn_config):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    step(s)
            torch.cuda.current_stream().wait_stream(side)


class _attention:
    """Switch the text layers to the decode attention while Python runs them (eager steps, capture)."""

    def __init__(self, config):
        self.config = config

    def __enter__(self):
        self.saved = self.config._attn_implementation_internal
        self.config._attn_implementation_internal = _ATTN_NAME

    def __exit__(self, *exc):
        self.config._attn_implementation_internal = self.saved


class _Clock:
    """Synchronised wall-clock laps (the merge and restore are GPU work queued behind the caller's)."""

    def __init__(self, device: torch.device):
        import time

        self._now, self._device, self.laps = time.perf_counter, device, {}
        self._last = self._now()

    def lap(self, name: str) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        now = self._now()
        self.laps[name] = now - self._last
        self._last = now


def _cache_layers(cache):
    """(keys, values) per layer of an HF cache, [B, KVH, P, D] each."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(cache.key_cache[i], cache.value_cache[i]) for i in range(len(cache.key_cache))]
