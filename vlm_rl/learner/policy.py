"""The trainable policy: model loading for training, LoRA, gradient checkpointing, token log-probs."""

from __future__ import annotations

import contextlib
import logging

import torch

from vlm_rl.config import BaseConfig
from vlm_rl.learner.checkpointing import decide as decide_checkpointing
from vlm_rl.models.families import model_family
from vlm_rl.models.loading import load_model, load_processor, resolve_model_path

log = logging.getLogger(__name__)


def build_policy(config: BaseConfig, device: str = "cpu"):
    """Return (model, processor, family) ready for DeepSpeed: LoRA or full, vision tower frozen."""
    path = resolve_model_path(config.model_path)
    torch.manual_seed(config.seed)  # LoRA init is random: the same seed gives the same adapter
    dtype = torch.bfloat16 if config.bf16 else torch.float32
    model = load_model(path, dtype=dtype, device=device)
    family = model_family(model.config)
    checkpointing = decide_checkpointing(config, model, device)
    log.info("gradient checkpointing %s (%s)", "on" if checkpointing.enabled else "off", checkpointing.reason)
    if checkpointing.enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.lora_r > 0:
        from peft import get_peft_model

        from vlm_rl.models.lora import lora_config

        if checkpointing.enabled:
            model.enable_input_require_grads()
        model = get_peft_model(model, lora_config(config.lora_r, config.effective_lora_alpha, config.lora_dropout))
    else:
        from vlm_rl.models.families import is_vision_parameter

        for name, param in model.named_parameters():
            if is_vision_parameter(name):
                param.requires_grad_(False)
    return model, load_processor(path), family


def reference_context(model, lora: bool):
    """Under LoRA the reference is the same network with the adapter switched off: no second copy."""
    if lora:
        return model.disable_adapter()
    return contextlib.nullcontext()


def model_inputs(batch: dict, model=None) -> dict:
    """The model's keyword arguments for ``batch``. A batch built with ``share_images`` (each image once,
    ``image_rows`` naming each row's) gets its vision features computed here, once per image, and handed
    to the model as ``mm_encoder_outputs`` (tuples of per-row references, no copies)."""
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    inputs = {k: batch[k] for k in keys if k in batch}
    if "image_rows" in batch and model is not None:
        inputs.pop("pixel_values")
        inputs["mm_encoder_outputs"] = {"image": image_features(model, batch)}
    return inputs


def image_features(model, batch: dict):
    """Vision tower output for the batch's distinct images, expanded to one entry per row."""
    core = _causal_lm(model).model
    frozen = not any(p.requires_grad for p in core.visual.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
        features = core.get_image_features(batch["pixel_values"], batch["unique_image_grid_thw"], return_dict=True)
    rows = list(batch["image_rows"])
    features.pooler_output = tuple(features.pooler_output[i] for i in rows)
    if getattr(features, "deepstack_features", None) is not None:
        features.deepstack_features = [tuple(level[i] for i in rows) for level in features.deepstack_features]
    return features


def completion_logprobs(model, batch: dict, temperature: float = 1.0, share_prompts: bool = False,
                        packed_attention: str = "dense") -> torch.Tensor:
    """Log-probs of the completion tokens, [N, C].

    Runs the decoder for hidden states and turns only the completion span into log-probs chunk by chunk
    (``chunked_token_logprobs``), so no [N, C, vocab] logits tensor exists in either pass. Falls back to
    sliced logits when the lm_head weight is sharded (ZeRO-3) or the model has no separate lm_head.
    ``share_prompts``: rows that share a prompt run it once (``learner/shared_prompt.py``); same values.
    ``packed_attention``: the packed row's mask, "dense" (the config's default), "flex" (a FlexAttention block
    mask) or "auto" (flex on CUDA; ``learner/packed_attention.py``).
    """
    completion_ids = batch["input_ids"][:, batch["prompt_length"] :]
    width = completion_ids.shape[1]
    lm = _causal_lm(model)
    head = getattr(lm, "lm_head", None)
    if share_prompts and head is not None and hasattr(lm, "model"):
        from vlm_rl.learner.shared_prompt import can_pack

        text_config = getattr(lm.config, "text_config", None)
        kernel = _packed_kernel(lm, packed_attention, batch)
        if can_pack(batch, getattr(lm.config, "_attn_implementation", None), text_config, kernel):
            return _packed_completion_logprobs(lm, model, batch, temperature, kernel)
    if head is not None and hasattr(lm, "model") and not hasattr(head.weight, "ds_id"):
        from vlm_rl.algos.logprobs import chunked_token_logprobs

        hidden = lm.model(**model_inputs(batch, model), use_cache=False).last_hidden_state
        return chunked_token_logprobs(hidden[:, -(width + 1) : -1], head.weight, completion_ids,
                                      temperature=temperature)
    out = model(**model_inputs(batch, model), logits_to_keep=width + 1, use_cache=False)
    return _logits_logprobs(out.logits[:, :-1, :], completion_ids, temperature)


def _packed_kernel(lm, setting: str, batch: dict) -> str:
    """"flex" where the setting resolves to it on this device and the text layers take a block mask (an
    ``sdpa`` model, switched to ``packed_attention``'s dispatcher), else "dense"."""
    from vlm_rl.learner import packed_attention

    text_config = getattr(lm.config, "text_config", lm.config)
    if "_packed" in batch:  # packed by an earlier pass (the policy's, then the reference model's): same mask
        if isinstance(batch["_packed"]["attention_mask"], torch.Tensor):
            return "dense"
        if not packed_attention.install(text_config):
            raise ValueError(f"packed_attention: a block mask was built for this micro-batch but this model's "
                             f"attention is {text_config._attn_implementation!r}, not sdpa")
        return "flex"
    if packed_attention.resolve(setting, batch["input_ids"].device) != "flex":
        return "dense"
    return "flex" if packed_attention.install(text_config) else "dense"


def _packed_completion_logprobs(lm, model, batch: dict, temperature: float, kernel: str = "dense") -> torch.Tensor:
    """``completion_logprobs`` with each group's prompt run once. The packing is kept in ``batch`` so the
    reference pass of the same micro-batch reuses it."""
    from vlm_rl.algos.logprobs import chunked_token_logprobs
    from vlm_rl.learner.shared_prompt import pack_prompt_groups, packed_position_ids

    core = lm.model
    packed = batch.get("_packed")
    if packed is None:
        eager = getattr(lm.config, "_attn_implementation", None) == "eager"
        # pad id 0: padding columns are masked out, any token id serves
        packed = pack_prompt_groups(batch, 0, float_mask_dtype=lm.dtype if eager else None,
                                    kernel="dense" if eager else kernel)
        packed["position_ids"] = packed_position_ids(core, packed)
        batch["_packed"] = packed
    inputs = model_inputs(packed, model)
    inputs["position_ids"] = packed["position_ids"]
    hidden = core(**inputs, use_cache=False).last_hidden_state
    picked = hidden.reshape(-1, hidden.shape[-1])[packed["hidden_index"]]  # [N, C, H]
    completion_ids = packed["completion_ids"]
    if not hasattr(lm.lm_head.weight, "ds_id"):
        return chunked_token_logprobs(picked, lm.lm_head.weight, completion_ids, temperature=temperature)
    return _logits_logprobs(lm.lm_head(picked), completion_ids, temperature)  # ZeRO-3: the call gathers the head


def _logits_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    from vlm_rl.algos.logprobs import selective_log_softmax

    return selective_log_softmax(logits / temperature if temperature != 1.0 else logits, ids)


def _causal_lm(model):
    """The ``...ForConditionalGeneration`` inside a DeepSpeed engine and/or a PEFT wrapper."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_named_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
