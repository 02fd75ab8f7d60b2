"""Random-weight Qwen VL models: tiny ones for tests/demo, full-size architectures for benchmarks.

Nothing can be downloaded, so every model here is built from a config. The tiny ones keep Qwen's real
vocabulary, special-token ids and processors, so everything around the model (prompts, parsing,
rewards, coordinates) runs exactly as it would with the real checkpoints; only the weights are noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vlm_rl.models.cache import DONE_MARKER, build_once
from vlm_rl.models.tokenizer import MODEL_VOCAB_SIZE, SPECIAL_IDS

FAMILIES = ("qwen3_vl", "qwen2_5_vl")

_TOKEN_IDS = dict(
    image_token_id=SPECIAL_IDS["<|image_pad|>"],
    video_token_id=SPECIAL_IDS["<|video_pad|>"],
    vision_start_token_id=SPECIAL_IDS["<|vision_start|>"],
    vision_end_token_id=SPECIAL_IDS["<|vision_end|>"],
)
_BOS = SPECIAL_IDS["<|endoftext|>"]
_EOS = SPECIAL_IDS["<|im_end|>"]
_PAD = SPECIAL_IDS["<|endoftext|>"]


def _qwen3_vl_config(text: dict, vision: dict, tie: bool):
    from transformers import Qwen3VLConfig

    text = dict(vocab_size=MODEL_VOCAB_SIZE, pad_token_id=_PAD, max_position_embeddings=262144, **text)
    vision = dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, **vision)
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **_TOKEN_IDS)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = _BOS, _EOS, _PAD
    return config


def tiny_config(family: str):
    """Config of the tiny model of ``family`` (~10 M parameters, nearly all in the 151,936-row embedding)."""
    if family == "qwen3_vl":
        return _qwen3_vl_config(
            text=dict(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16,
                rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2],
                                 "mrope_interleaved": True},
            ),
            vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                        num_position_embeddings=256, deepstack_visual_indexes=[1]),
            tie=True,
        )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text = dict(
            vocab_size=MODEL_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
            # head_dim = 64 / 4 = 16; mrope_section (temporal, height, width) sums to head_dim / 2
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
            bos_token_id=_BOS, eos_token_id=_EOS, pad_token_id=_PAD,
        )
        vision = dict(
            depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_TOKEN_IDS)
        config.bos_token_id, config.eos_token_id, config.pad_token_id = _BOS, _EOS, _PAD
        return config
    raise ValueError(f"family: unknown model family {family!r}; expected one of {FAMILIES}")


#: Published architectures (numbers from the released configs) for random-weight benchmarks.
_REAL = {
    "qwen3-vl-2b": dict(
        text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128),
        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
        tie=True,
    ),
    "qwen3-vl-8b": dict(
        text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128),
        vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                    num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]),
        tie=False,
    ),
}


def real_architecture_config(name: str):
    """Config of a released architecture ("qwen3-vl-2b" or "qwen3-vl-8b") for random-weight models.

    Build the model on the meta device to count parameters without memory::

        with torch.device("meta"):
            model = Qwen3VLForConditionalGeneration(real_architecture_config("qwen3-vl-2b"))
    """
    key = name.lower()
    if key not in _REAL:
        raise ValueError(f"name: unknown architecture {name!r}; expected one of {sorted(_REAL)}")
    spec = _REAL[key]
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
    return _qwen3_vl_config(text={**spec["text"], "rope_parameters": rope}, vision=spec["vision"], tie=spec["tie"])


def _is_saved_model(path: Path) -> bool:
    return (path / DONE_MARKER).is_file() or (
        (path / "config.json").is_file() and (path / "model.safetensors").is_file()
        and (path / "tokenizer.json").is_file()
    )


def build_tiny_model(out_dir: str | os.PathLike, family: str = "qwen3_vl", seed: int = 0) -> Path:
    """Save a tiny random-weight ``family`` model, its processor and generation config to ``out_dir``.

    Idempotent: a folder that already holds a built model is returned as is. Safe to call from several
    processes at once (a file lock; the folder appears by atomic rename).
    """
    if family not in FAMILIES:
        raise ValueError(f"family: unknown model family {family!r}; expected one of {FAMILIES}")
    out = Path(out_dir).expanduser().resolve()
    if _is_saved_model(out):
        return out

    def build(tmp: Path) -> None:
        from transformers import GenerationConfig

        from vlm_rl.models.families import model_class
        from vlm_rl.models.processor import make_processor
        from vlm_rl.models.tokenizer import load_qwen_tokenizer

        config = tiny_config(family)
        torch.manual_seed(seed)
        model = model_class(family)(config).to(torch.float32).eval()
        model.generation_config = GenerationConfig(
            bos_token_id=_BOS, eos_token_id=[_EOS, _PAD], pad_token_id=_PAD, do_sample=False,
        )
        model.save_pretrained(tmp, safe_serialization=True)
        make_processor(load_qwen_tokenizer(family), family).save_pretrained(tmp)

    return build_once(out, build)
