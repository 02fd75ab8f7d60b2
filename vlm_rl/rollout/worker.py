"""A rollout worker: one copy of the policy that samples NUM_GENERATIONS answers per prompt and scores them.

It is a plain class; ``vlm_rl.rollout.pool`` turns it into a Ray actor. Keeping Ray out of it lets the
learner tests and benchmarks drive the same code in-process. Sampling is ``RolloutEngine`` over this
worker's own model copy: the same fast sampler as the colocated path (``rollout_engine: fast``), or HF
generate (``hf``).

The actor runs up to two calls at once (so ``version``/``generating`` answer during a long ``generate``), but
everything that reads or writes the weights holds one lock: sampling folds the LoRA adapter into the base
weights in place and unfolds it with the same adapter afterwards, so a weight update landing in between
would leave the base weights corrupted. A weight update asked for during a ``generate`` waits for it.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import torch

from vlm_rl.models.families import model_family
from vlm_rl.models.loading import load_model, load_processor
from vlm_rl.rollout.engine import RolloutEngine
from vlm_rl.rollout.types import PromptItem
from vlm_rl.rollout.weight_sync import Entry, Packed, device_uuid, open_packed, unpack


class FifoLock:
    """A lock granted in the order it was asked for (``threading.Lock`` is not fair): a weight update that
    reaches the actor between two generates (asynchronous GRPO) lands between them, not after both."""

    def __init__(self):
        self._cond = threading.Condition()
        self._next = 0  # next ticket to hand out
        self._serving = 0  # ticket allowed in

    def reserve(self) -> int:
        """Take a place in the queue now, enter later with ``hold`` (a weight broadcast is received before
        the update waits for its turn, so the sender never waits for a running generate)."""
        with self._cond:
            ticket, self._next = self._next, self._next + 1
            return ticket

    @contextmanager
    def hold(self, ticket: int):
        with self._cond:
            self._cond.wait_for(lambda: self._serving == ticket)
        try:
            yield
        finally:
            self.__exit__()

    def __enter__(self):
        ticket = self.reserve()
        with self._cond:
            self._cond.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc):
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class RolloutWorker:
    """Holds a policy copy; generates, scores, and accepts new weights from the learners."""

    def __init__(
        self,
        model_path: str,
        *,
        labels: list[str] | None,
        max_image_size: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 64,
        format_weight: float = 0.5,
        lora_rank: int = 0,
        lora_alpha: int = 16,
        seed: int = 0,
        worker_index: int = 0,
        device: str | None = None,
        dtype: str = "float32",
        engine: str = "fast",
        min_new_tokens: int = 0,
        compile_decode: bool = False,
        return_logprobs: bool = True,
        fp8: bool = False,
    ):
        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = load_processor(model_path)
        model = load_model(model_path, dtype=getattr(torch, dtype), device=self.device)
        self.family = model_family(model.config)
        self.lora = lora_rank > 0
        if self.lora:
            from peft import get_peft_model

            from vlm_rl.models.lora import lora_config

            model = get_peft_model(model, lora_config(lora_rank, lora_alpha))
        self.model = model.eval()
        self.sampler = RolloutEngine(
            self.model, self.processor, self.family, labels=labels, max_image_size=max_image_size,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, format_weight=format_weight,
            seed=seed, min_new_tokens=min_new_tokens, engine=engine, compile_decode=compile_decode,
            batch_size=batch_size, worker_index=worker_index, logprobs=return_logprobs, fp8=fp8,
        )
        self.max_image_size = max_image_size
        self.worker_index = worker_index
        self._lock = FifoLock()  # generation and evaluation vs weight updates (see the module doc)
        self._generating = False
        self._group = None  # weight-broadcast group with the learner (rollout/broadcast.py), when the pool forms one
        self._received = threading.Condition()  # broadcasts are joined in the sender's order
        self._next_broadcast = 0

    @property
    def weights_version(self) -> int:
        return self.sampler.weights_version

    # -- weights -------------------------------------------------------------------------------
    def update_weights(self, state: dict[str, torch.Tensor] | Packed, version: int) -> int:
        """Load the learners' trainable weights (the LoRA adapter alone under LoRA), a state dict or a
        ``weight_sync.Packed`` buffer; waits for a running ``generate``/``evaluate`` first."""
        with self._lock:
            if isinstance(state, Packed):
                views = open_packed(state)
                try:
                    self._load(views)
                    if self.device != "cpu" and torch.cuda.is_available():
                        torch.cuda.synchronize()  # copies out of the sender's buffer done before it is freed
                finally:
                    del views
            else:
                self._load(state)
            self.sampler.weights_version = version
            return version

    def join_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str,
                          generation: int, timeout_s: float) -> int:
        """Become ``rank`` of the pool's weight-broadcast group (replacing an older group)."""
        from vlm_rl.rollout.broadcast import BroadcastGroup

        if self._group is not None:
            self._group.close()
        self._group = BroadcastGroup.join(host, port, rank, world_size, backend, generation=generation,
                                          timeout_s=timeout_s)
        with self._received:
            self._next_broadcast = 0
        return rank

    def receive_weights(self, entries: list[Entry], nbytes: int, version: int, sequence: int) -> int:
        """Take part in the sender's ``sequence``-th broadcast at once (also during a generate: the bytes land
        in a buffer of this actor's own), then load them in turn behind the lock like ``update_weights``."""
        ticket = self._lock.reserve()
        try:
            with self._received:
                self._received.wait_for(lambda: self._next_broadcast == sequence)
            try:
                buffer = torch.empty(nbytes, dtype=torch.uint8, device=self._group.device)
                self._group.broadcast(buffer)
            finally:
                with self._received:
                    self._next_broadcast += 1
                    self._received.notify_all()
        except BaseException:
            with self._lock.hold(ticket):  # give the place in the queue up, or every later call would wait
                pass
            raise
        with self._lock.hold(ticket):
            self._load(unpack(entries, buffer))  # load_state_dict copies across devices
            self.sampler.weights_version = version
            return version

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        if self.lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, state)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise KeyError(f"adapter keys not in the rollout model: {unexpected[:3]}")
        else:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected:
                raise KeyError(f"weights not in the rollout model: {unexpected[:3]}")

    def get_weights(self, include_base: bool = False) -> dict[str, torch.Tensor]:
        """The trainable weights (the adapter alone under LoRA; with ``include_base`` every weight) on CPU."""
        with self._lock:
            if self.lora and not include_base:
                from peft import get_peft_model_state_dict

                return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.model).items()}
            return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def version(self) -> int:
        return self.weights_version

    def generating(self) -> bool:
        """True while a ``generate`` call holds the weights (lock-free: answers during it)."""
        return self._generating

    def engine_info(self) -> dict:
        """Which sampler runs here: engine (fast/hf), decode mode (graph/eager/...), LoRA modules folded."""
        decoder = self.sampler.decoder
        return {"engine": self.sampler.engine, "device": str(self.device),
                "decode_mode": decoder.mode if decoder is not None else "hf-generate",
                "merged_modules": decoder.merged_modules if decoder is not None else 0}

    def device_uuid(self) -> str | None:
        """The GPU this actor samples on (None on CPU): the pool uses CUDA IPC when it is the learner's."""
        return device_uuid(self.device) if self.device != "cpu" else None

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, val_data: str, limit: int | None = None) -> dict[str, float]:
        """Greedy detection metrics of the weights this actor holds (mAP, P/R/F1, format-valid rate)."""
        with self._lock:
            return self.sampler.evaluate(val_data, limit)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompts: list[tuple[int, PromptItem]], num_generations: int, step: int,
                 min_version: int = 0, wait_s: float = 60.0) -> dict:
        """Sample ``num_generations`` answers for each (index, prompt); return completions and timings.

        ``min_version``: the weights the caller sent before this call. Ray runs a threaded actor's calls in no
        guaranteed order, so this call may reach the lock before the update sent ahead of it; it then waits
        (outside the lock, up to ``wait_s``) for that update instead of sampling stale weights that the pool
        would have to discard and redo. An actor at version 0 (restarted: base weights) does not wait: only
        a resync brings it forward, and the pool does that when it sees the stale answer."""
        deadline = time.monotonic() + wait_s
        while 0 < self.weights_version < min_version and time.monotonic() < deadline:
            time.sleep(0.005)
        with self._lock:
            self._generating = True
            try:
                out = self.sampler.generate([item for _, item in prompts], num_generations, step,
                                            indices=[index for index, _ in prompts])
            finally:
                self._generating = False
        out["timings"] = dict(self.sampler.last_timings)
        if str(self.device).startswith("cuda"):
            out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return out

    def prefetch(self, prompts: list[tuple[int, PromptItem]]) -> None:
        """Start encoding the next shard on a CPU thread (no lock: it does not touch the weights)."""
        self.sampler.prefetch([item for _, item in prompts])

    def shutdown(self) -> None:
        self.sampler.shutdown()
