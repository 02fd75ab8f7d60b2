"""Image+text processors for Qwen VL models that work without torchvision.

transformers' default Qwen image/video processors import torchvision, which fails to import beside the
CPU torch build used here; the PIL image processor does the same maths without it, and videos are not
used for detection, so the processors below simply have no video processor. Because the saved
``processor_class`` is ours, ``AutoProcessor.from_pretrained`` does not rebuild them: use
:func:`load_family_processor` (or ``vlm_rl.models.loading.load_processor``).
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

#: Vision patch size per family; all use spatial merge 2, so the image side factor is 2x this.
PATCH_SIZE = {"qwen3_vl": 16, "qwen2_5_vl": 14, "qwen2_vl": 14}
MERGE_SIZE = 2
#: Largest input the processor accepts unchanged: 4096 x 4096, the largest MAX_IMAGE_SIZE allowed.
MAX_PIXELS = 4096 * 4096
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor without a video processor (which would need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without a video processor (which would need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without a video processor (which would need torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


PROCESSOR_CLASSES = {
    "qwen3_vl": Qwen3VLImageOnlyProcessor,
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
}


def _check_family(family: str) -> None:
    if family not in PROCESSOR_CLASSES:
        raise ValueError(f"family: unknown model family {family!r}; expected one of {sorted(PROCESSOR_CLASSES)}")


def image_processor_for(family: str) -> Qwen2VLImageProcessorPil:
    """PIL image processor that leaves images whose sides are multiples of the family's factor as they are.

    min_pixels is one factor x factor square (the smallest image vlm_rl.data.resize produces) and
    max_pixels 4096^2, so ``smart_resize`` is the identity on every image the data pipeline feeds in.
    """
    _check_family(family)
    patch = PATCH_SIZE[family]
    factor = patch * MERGE_SIZE
    qwen3 = family == "qwen3_vl"
    return Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        min_pixels=factor * factor,
        max_pixels=MAX_PIXELS,
        image_mean=[0.5, 0.5, 0.5] if qwen3 else list(_CLIP_MEAN),
        image_std=[0.5, 0.5, 0.5] if qwen3 else list(_CLIP_STD),
    )


def make_processor(tokenizer, family: str):
    """A fresh processor for ``family`` around ``tokenizer`` (its chat template is reused)."""
    _check_family(family)
    return PROCESSOR_CLASSES[family](
        image_processor=image_processor_for(family), tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


def load_family_processor(path: str | os.PathLike, family: str):
    """Load a processor saved by :func:`make_processor` (or a hub checkpoint's tokenizer + image settings).

    The image processor is always rebuilt as the PIL one from the saved settings, so checkpoints whose
    ``preprocessor_config.json`` names the torchvision class load too.
    """
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    _check_family(family)
    path = Path(path)
    tokenizer = Qwen2Tokenizer.from_pretrained(path)
    image_processor = _load_image_processor(path, family)
    template = tokenizer.chat_template
    if template is None:
        from vlm_rl.models.tokenizer import chat_template

        template = tokenizer.chat_template = chat_template(family)
    return PROCESSOR_CLASSES[family](image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _load_image_processor(path: Path, family: str) -> Qwen2VLImageProcessorPil:
    """The PIL image processor with the checkpoint's patch/normalisation settings and our pixel range.

    The pixel range is always ours: a hub checkpoint's min_pixels (65536 for Qwen3-VL) would enlarge
    small inputs, and then boxes in pixels of the resized input would no longer match what the model saw.
    """
    import json

    processor = image_processor_for(family)
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: invalid JSON: {exc}") from exc
        data = data.get("image_processor", data)
        if "patch_size" in data:
            for key in ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std"):
                if key in data:
                    setattr(processor, key, data[key])
            factor = processor.patch_size * processor.merge_size
            processor.size = {"shortest_edge": factor * factor, "longest_edge": MAX_PIXELS}
            break
    return processor
