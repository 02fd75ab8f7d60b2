"""Qwen's tokenizer built offline: exact special ids, real BPE, Qwen's chat format, cached build."""

from __future__ import annotations

import json

import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from vlm_rl.models.tokenizer import (
    SPECIAL_TOKENS,
    chat_template,
    load_qwen_tokenizer,
    tiktoken_file,
    tokenizer_cache_dir,
)

QWEN_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
    "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}


@pytest.fixture(scope="module")
def tok():
    return load_qwen_tokenizer("qwen3_vl")


def test_special_token_ids_are_qwens(tok):
    assert tok.convert_tokens_to_ids(list(QWEN_IDS)) == list(QWEN_IDS.values())
    assert list(SPECIAL_TOKENS) == list(QWEN_IDS)
    assert len(tok) == 151657
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    # special tokens are single ids inside text, not split into pieces
    assert tok("a<|image_pad|>b", add_special_tokens=False)["input_ids"] == [64, 151655, 65]


def test_encoding_matches_qwens_tiktoken_bpe(tok):
    """The converted fast tokenizer gives the same ids as tiktoken with Qwen's ranks and regex."""
    pattern = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding("qwen", pat_str=pattern, mergeable_ranks=load_tiktoken_bpe(str(tiktoken_file())),
                            special_tokens=QWEN_IDS)
    for text in ['[{"bbox_2d": [12, 345, 678, 901], "label": "stop_sign"}]',
                 "Hello world!  Ça va? 你好，世界 2024\n\n\ttabs  end",
                 "<|im_start|>user\nFind signs.<|im_end|>\n"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == enc.encode(text, allowed_special="all"), text
        assert tok.decode(ids) == text
    assert tok("123", add_special_tokens=False)["input_ids"] == [16, 17, 18]  # Qwen splits digits


def test_chat_template_qwen3_vl(tok):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find signs."}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Find signs.<|im_end|>\n<|im_start|>assistant\n"
    )
    turns = messages + [{"role": "assistant", "content": "[]"}]
    assert tok.apply_chat_template(turns, tokenize=False).endswith("<|im_start|>assistant\n[]<|im_end|>\n")


def test_chat_template_qwen25_adds_default_system_prompt(tok):
    tok.chat_template = chat_template("qwen2_5_vl")  # what load_qwen_tokenizer("qwen2_5_vl") sets
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    own = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(own, tokenize=False).startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user")
    tok.chat_template = chat_template("qwen3_vl")


def test_built_tokenizer_is_cached_and_reused(tok):
    """Conversion (~3 s) happens once; later loads read the cached folder without rewriting it."""
    saved = tokenizer_cache_dir() / "tokenizer.json"
    before = saved.stat()
    again = load_qwen_tokenizer("qwen2_5_vl")
    after = saved.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert again.convert_tokens_to_ids("<|video_pad|>") == 151656
    assert "You are a helpful assistant." in again.chat_template


def test_merges_are_one_per_token_like_qwens_merges_txt(tok):
    model = json.loads((tokenizer_cache_dir() / "tokenizer.json").read_text())["model"]
    assert len(model["vocab"]) == 151643 and len(model["merges"]) == 151643 - 256
    assert model["merges"][0] == ["Ġ", "Ġ"]  # Qwen's merges.txt starts with two spaces
