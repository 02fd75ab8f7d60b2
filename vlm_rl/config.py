"""One typed configuration style for every vlm-rl command.

Values come, lowest priority first, from: class defaults → a YAML file → the familiar
environment names of shell-script trainers (MODEL_PATH, NUM_GENERATIONS, ...) → ``key=value``
overrides from the command line. Everything is validated here, before any Ray resources are
taken, so a typo costs a second instead of a cluster start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Environment names users know from shell-script trainers → config field.
ENV_NAMES: dict[str, str] = {
    "MODEL_PATH": "model_path",
    "MAX_IMAGE_SIZE": "max_image_size",
    "NUM_GENERATIONS": "num_generations",
    "BETA": "beta",
    "LEARNING_RATE": "learning_rate",
    "LORA_R": "lora_r",
    "EVAL_STEPS": "eval_steps",
    "OUTPUT_DIR": "output_dir",
    "DISABLE_GRADIENT_CHECKPOINTING": "disable_gradient_checkpointing",
    "MLFLOW_TRACKING_URI": "tracking_uri",
    "TRAIN_DATA": "train_data",
    "VAL_DATA": "val_data",
}

#: Names of models built offline with random weights (tests, demo). Anything else is a path or hub id.
TINY_MODELS = ("tiny-qwen3-vl", "tiny-qwen2.5-vl")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field and the source."""


class BaseConfig(BaseModel):
    """Fields shared by every command: model, data, output, tracking, cluster shape."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # model & data
    model_path: str = Field("tiny-qwen3-vl", description="HF path/id, local dir, or a TINY_MODELS name")
    train_data: str | None = Field(None, description="JSONL of {image, objects:[{label,bbox_2d}]}; None = synthetic")
    val_data: str | None = None
    labels: list[str] | None = Field(None, description="allowed labels; None = taken from the data")
    max_image_size: int = Field(448, ge=32, le=4096, description="longest image side fed to the model, px")
    synthetic_train_size: int = Field(256, ge=1)
    synthetic_val_size: int = Field(32, ge=1)
    synthetic_max_objects: int = Field(3, ge=0, le=8, description="objects per synthetic image, at most")

    # output & tracking
    output_dir: str = "outputs/run"
    tracking_uri: str | None = Field(None, description="MLflow URI; None = sqlite:///<output_dir>/mlflow.db")
    experiment_name: str = "vlm-rl"
    run_name: str | None = None
    seed: int = 0

    # cluster shape
    num_learners: int = Field(2, ge=1, description="Ray Train workers (DeepSpeed ranks)")
    use_gpu: bool = False
    cpus_per_learner: float = Field(1.0, gt=0)
    gpus_per_learner: float = Field(1.0, gt=0, le=8, description="GPUs per learner when use_gpu (a fraction "
                                    "lets a learner share its GPU with rollout actors, e.g. 0.5)")
    zero_stage: Literal[0, 1, 2, 3] = 2
    bf16: bool = False

    # model training knobs
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    lora_r: int = Field(16, ge=0, description="LoRA rank; 0 = full fine-tuning")
    lora_alpha: int | None = Field(None, ge=1, description="None = 2 * lora_r")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="recompute each decoder layer's activations in the backward pass (memory for time); "
        "auto = only when a micro-batch's activations would not fit the learner's memory with a margin "
        "(learner/checkpointing.py decides at model load and logs why)")
    disable_gradient_checkpointing: bool | None = Field(
        None, description="the seed script's DISABLE_GRADIENT_CHECKPOINTING: true = gradient_checkpointing false, "
        "false = gradient_checkpointing true; unset = gradient_checkpointing decides")
    save_every_samples: int = Field(0, ge=0, description="checkpoint every N training samples; 0 = only at end")
    keep_checkpoints: int = Field(2, ge=1)
    resume: str | None = Field(None, description="'auto' (latest in output_dir) or a checkpoint path")
    max_failures: int = Field(2, ge=0, description="learner restarts (from the last checkpoint) before giving up")
    disk_check: bool = Field(True, description="compare the checkpoints' estimated size with the free space at "
                             "output_dir before the run and before each checkpoint; false for a filesystem "
                             "that misreports its free space")
    micro_batch_size: int = Field(0, ge=0, description="sequences per forward/backward; 0 = a rank's whole batch")
    compile_layers: bool = Field(False, description="torch.compile each decoder layer for the learner's "
                                 "forward/backward (GPU: fuses the elementwise work; the first step compiles)")

    @model_validator(mode="after")
    def _map_disable_gradient_checkpointing(self) -> BaseConfig:
        if self.disable_gradient_checkpointing is None:
            return self
        wanted = not self.disable_gradient_checkpointing
        if "gradient_checkpointing" in self.model_fields_set and self.gradient_checkpointing != wanted:
            raise ValueError(f"gradient_checkpointing: {self.gradient_checkpointing!r} contradicts "
                             f"disable_gradient_checkpointing={self.disable_gradient_checkpointing}; set one of them")
        # (frozen model: set once, while validating; the old spelling is then folded in, so a dump round-trips)
        object.__setattr__(self, "gradient_checkpointing", wanted)
        object.__setattr__(self, "disable_gradient_checkpointing", None)
        return self

    @property
    def effective_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * max(self.lora_r, 1)

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{Path(self.output_dir).resolve() / 'mlflow.db'}"

    @model_validator(mode="after")
    def _check_paths(self) -> BaseConfig:
        for name in ("train_data", "val_data"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name}: file not found: {value}")
        if self.bf16 and not self.use_gpu:
            raise ValueError("bf16: needs use_gpu=true (CPU runs train in float32)")
        if self.compile_layers and self.zero_stage == 3:
            raise ValueError("compile_layers: not supported with zero_stage=3 (ZeRO-3 gathers each layer's "
                             "weights in hooks the compiled layers would bypass); use zero_stage <= 2")
        return self


class GRPOConfig(BaseConfig):
    """GRPO: rollouts from a Ray actor pool, DeepSpeed learners on Ray Train."""

    num_generations: int = Field(4, ge=2, description="completions per prompt (the GRPO group)")
    prompts_per_step: int = Field(4, ge=1, description="prompts per GRPO step (one generation batch), over all "
                                  "learners; trained on in num_iterations x steps_per_generation optimizer steps")
    num_steps: int = Field(20, ge=1)
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference, a k3 term in the loss; 0 = no "
                        "reference pass. Peers differ: TRL's default is 0; verl puts the KL in the loss "
                        "(use_kl_loss) or in the reward (use_kl_in_reward)")
    # Off-policy objective (decoupled PPO, docs/ARCHITECTURE.md "Off-policy objective"): the clip is centred on the
    # proximal policy (the learner before this batch's first update), the sampler is corrected by IS (tis_*).
    # Peers differ: TRL's AsyncGRPOTrainer clips against the sampler's log-probs, so its epsilon also acts with
    # one update per batch; here staleness goes to the IS weight and the clip bounds the updates on one batch.
    num_iterations: int = Field(1, ge=1, le=16, description="passes over each generation batch (PPO epochs; TRL "
                                "num_iterations, verl ppo_epochs); every pass after the first trains on data the "
                                "learner has moved away from, which is where the clip acts")
    steps_per_generation: int = Field(1, ge=1, le=64, description="optimizer steps per pass: a rank's completions "
                                      "are split into this many mini-batches (TRL steps_per_generation; verl: "
                                      "train batch / ppo_mini_batch_size); the proximal log-probs of every "
                                      "mini-batch are taken in one no-grad pass before the first update")
    epsilon: float = Field(0.2, gt=0, lt=1, description="lower clip of the ratio pi/pi_prox (pi_prox: the learner "
                           "before the batch's first update); acts only with several updates per batch "
                           "(num_iterations > 1 or steps_per_generation > 1), in every rollout mode; with one "
                           "update per batch the ratio is 1 and the clip never acts, on- or off-policy")
    epsilon_high: float | None = Field(None, gt=0, description="upper clip (DAPO clip-higher); None = epsilon; "
                                       "acts when epsilon does")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    num_rollout_workers: int = Field(1, ge=1)
    rollout_gpus: float = Field(0.0, ge=0, description="GPUs per rollout actor (0 on CPU; a fraction shares a GPU)")
    rollout_engine: Literal["fast", "hf"] = Field(
        "fast", description="rollout actors' sampler: fast = static KV cache + CUDA-graphed decode (the colocated "
        "path's engine; plain static-cache decode on CPU), hf = transformers generate (fallback)")
    weight_sync: Literal["auto", "object_store", "cuda_ipc", "broadcast"] = Field(
        "auto", description="how learner weights reach the rollout actors: auto = CUDA IPC to actors on the "
        "learner's GPU, Ray's object store to the rest; broadcast = a torch.distributed broadcast from learner "
        "rank 0 (NCCL when every actor has a GPU of its own, else gloo), what full-weight runs across GPUs need")
    max_staleness: int = Field(0, ge=0, le=8, description="0 = on-policy (sample, then train); k > 0 = the "
                               "rollout pool samples up to k steps ahead of the learners (asynchronous GRPO)")
    tis_cap: float = Field(2.0, ge=1.0, description="c of the importance-sampling correction of the sampler "
                           "(pi_prox / pi_sampler, computed once per batch): the cap of the truncate modes, the "
                           "band [1/c, c] outside which the mask modes drop a token or sequence; acts whenever the "
                           "sampler's log-probs come with the rollouts, on-policy (precision/kernel mismatch) and "
                           "asynchronous (staleness)")
    tis_mode: Literal["token_truncate", "sequence_truncate", "token_mask", "sequence_mask"] = Field(
        "token_truncate", description="importance-sampling variant (vlm_rl/algos/importance.py): token_truncate = "
        "min(r_t, c) per token; sequence_truncate = min(prod r_t, c) per completion; token_mask / sequence_mask = "
        "the ratio where it lies in [1/c, c], else 0 (TRL vllm_importance_sampling_mode; verl rollout_is/_rs)")
    rollout_batch_size: int = Field(64, ge=1, description="completions generated per forward batch")
    format_weight: float = Field(0.5, ge=0)
    eval_steps: int = Field(0, ge=0, description="evaluate every N steps; 0 = off")
    eval_on_start: bool = Field(False, description="with eval_steps: also evaluate the policy GRPO starts from "
                                "(after any SFT warm-up), logged at step 0, the baseline later evaluations beat")
    log_images_every: int = Field(5, ge=0, description="draw sample rollouts every N steps; 0 = off")
    sft_warmup_steps: int = Field(0, ge=0, description="supervised steps before GRPO (makes tiny models learnable)")
    sft_warmup_learning_rate: float | None = Field(
        None, gt=0, lt=1, description="learning rate of the SFT warm-up; None = learning_rate (GRPO's)")
    rollout_mode: Literal["pool", "colocated"] = Field(
        "pool", description="pool = Ray rollout actors; colocated = the learner's own model samples (1 learner)")
    compile_decode: bool = Field(False, description="colocated rollout: torch.compile the CUDA-graphed decode "
                                 "step (GPU; the first rollout compiles for about a minute)")
    rollout_dtype: Literal["model", "fp8"] = Field(
        "model", description="fp8 = the fast engine samples with e4m3 copies of the text decoder's projections "
        "(per-channel scales, quantized from the learner's weights, LoRA folded, at every rollout); the learner "
        "stays in its dtype and the truncated IS weight (tis_cap, tis_mode) corrects the mismatch")
    share_prompt_forward: bool = Field(
        True, description="learner: run each GRPO group's prompt once and let its completions attend to it "
        "(a block mask; same log-probs and gradients), instead of repeating the prompt per completion")
    packed_attention: Literal["auto", "flex", "dense"] = Field(
        "dense", description="the shared-prompt row's attention: dense = an [L, L] mask on SDPA; flex = a "
        "FlexAttention block mask that skips the tiles no query sees (CUDA only for training); auto = flex on a "
        "GPU, dense elsewhere. dense stays the default until flex has been timed on a GPU (docs/PERFORMANCE.md)")

    @property
    def clip_high(self) -> float:
        return self.epsilon_high if self.epsilon_high is not None else self.epsilon

    @model_validator(mode="after")
    def _check_shape(self) -> GRPOConfig:
        if self.prompts_per_step % self.num_learners:
            raise ValueError(
                f"prompts_per_step: {self.prompts_per_step} must be a multiple of num_learners={self.num_learners}"
            )
        completions_per_rank = self.prompts_per_step // self.num_learners * self.num_generations
        if completions_per_rank % self.steps_per_generation:
            raise ValueError(f"steps_per_generation: {self.steps_per_generation} must divide the completions per "
                             f"learner per step ({completions_per_rank} = prompts_per_step / num_learners x "
                             "num_generations): each optimizer step takes an equal mini-batch")
        if self.max_staleness and self.rollout_mode != "pool":
            raise ValueError("max_staleness: asynchronous GRPO needs rollout_mode=pool (the colocated rollout "
                             "samples with the learner's own model, so it cannot run ahead of it)")
        if self.rollout_dtype == "fp8" and self.rollout_engine != "fast":
            raise ValueError("rollout_dtype: fp8 sampling is a mode of the fast engine; set rollout_engine=fast")
        if self.rollout_dtype == "fp8" and self.rollout_mode == "colocated" and self.zero_stage == 3:
            raise ValueError("rollout_dtype: fp8 quantizes the sampler's full weights, and a colocated ZeRO-3 "
                             "learner holds only shards; use rollout_mode=pool (the actors hold full weights) or "
                             "zero_stage 2")
        if self.compile_decode and self.rollout_mode != "colocated":
            raise ValueError("compile_decode: only the colocated rollout compiles its decode step; "
                             "set rollout_mode=colocated or leave compile_decode off")
        return self


class SFTConfig(BaseConfig):
    """LoRA supervised fine-tuning on detection answers."""

    num_epochs: int = Field(1, ge=1)
    max_steps: int = Field(0, ge=0, description="stop after N steps; 0 = num_epochs")
    batch_size: int = Field(4, ge=1, description="samples per optimizer step over all learners")
    learning_rate: float = Field(2e-4, gt=0, lt=1)


class DPOConfig(BaseConfig):
    """DPO on chosen/rejected pairs (see `vlm-rl dpo-data`)."""

    pairs: str | None = Field(None, description="JSONL of DPO pairs from `vlm-rl dpo-data`")
    beta: float = Field(0.1, gt=0)
    num_epochs: int = Field(1, ge=1)
    max_steps: int = Field(0, ge=0)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(5e-5, gt=0, lt=1)


C = TypeVar("C", bound=BaseConfig)


def _parse_scalar(text: str) -> Any:
    """Parse an override/env value the way YAML would (numbers, booleans, lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


#: A config file may build on a recipe: ``recipe: PATH`` (a relative PATH is looked up from the current folder,
#: then from the file's own folder); the recipe's keys are read first, the file's own keys override them. The
#: sweep's recommended.yaml is such a file: the recipe plus the knobs the sweep chose.
RECIPE_KEY = "recipe"


def _find_recipe(ref: Any, path: str | os.PathLike) -> Path:
    target = Path(str(ref)).expanduser()
    candidates = [target] if target.is_absolute() else [Path.cwd() / target, Path(path).parent / target]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{path}: {RECIPE_KEY}: file not found: {ref} (looked for {', '.join(map(str, candidates))})")


def read_config_file(
    path: str | os.PathLike, _chain: tuple[Path, ...] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    r"""The keys of a YAML config (lower-cased), with its ``recipe:`` chain resolved; and which file set each key.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "base.yaml").write_text("num_steps: 3\nbeta: 0.0\n")
    >>> _ = (folder / "mine.yaml").write_text("recipe: base.yaml\nbeta: 0.04\n")
    >>> values, origin = read_config_file(folder / "mine.yaml")
    >>> values, Path(origin["num_steps"]).name, Path(origin["beta"]).name
    ({'num_steps': 3, 'beta': 0.04}, 'base.yaml', 'mine.yaml')
    """
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    values = {str(k).lower(): v for k, v in loaded.items()}
    origin = {k: str(path) for k in values}
    ref = values.pop(RECIPE_KEY, None)
    origin.pop(RECIPE_KEY, None)
    if ref is None:
        return values, origin
    recipe = _find_recipe(ref, path)
    here = Path(path).resolve()
    if recipe.resolve() in (*_chain, here):
        raise ConfigError(f"{path}: {RECIPE_KEY}: {ref} leads back to a file already read (a circle of recipes)")
    base_values, base_origin = read_config_file(recipe, (*_chain, here))
    return {**base_values, **values}, {**base_origin, **origin}


def load_config(
    cls: type[C],
    path: str | os.PathLike | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> C:
    """Build ``cls`` from YAML + environment + overrides; raise ConfigError naming the bad field.

    >>> load_config(GRPOConfig, overrides=["num_generations=8"], env={}).num_generations
    8
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # field -> where its value came from, for the error message
    if path is not None:
        values, origin = read_config_file(path)
    env = os.environ if env is None else env
    for name, field in ENV_NAMES.items():
        if name in env and field in cls.model_fields:
            values[field] = _parse_scalar(env[name])
            origin[field] = f"environment variable {name}={env[name]!r}"
    if isinstance(overrides, dict):
        values.update(overrides)
        origin.update({k: f"override {k}={v!r}" for k, v in overrides.items()})
    else:
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r}: expected key=value")
            key = key.strip().lstrip("-").replace("-", "_").lower()
            field = ENV_NAMES.get(key.upper(), key)
            values[field] = _parse_scalar(raw)
            origin[field] = f"override {item}"
    try:
        return cls(**values)
    except ValidationError as exc:
        problems = "; ".join(_problem(err, origin, cls) for err in exc.errors())
        raise ConfigError(f"invalid {cls.__name__}: {problems}") from exc


def _problem(err: Mapping[str, Any], origin: Mapping[str, str], cls: type[BaseConfig]) -> str:
    """``field: message (from SOURCE)``: the source is the file, the environment variable (with its value) or the
    override that set the field; a cross-field check (no loc) is traced by the field name its message starts with.

    >>> _problem({"loc": ("learning_rate",), "msg": "bad"}, {"learning_rate": "environment variable X='y'"}, GRPOConfig)
    "learning_rate: bad (from environment variable X='y')"
    """
    loc = ".".join(str(p) for p in err.get("loc", ()))
    field = str(err["loc"][0]) if err.get("loc") else ""
    if not field:
        named = re.match(r"(?:Value error, )?(\w+):", str(err.get("msg", "")))
        field = named.group(1) if named and named.group(1) in cls.model_fields else ""
    where = origin.get(field)
    return f"{loc or 'config'}: {err['msg']}" + (f" (from {where})" if where else "")


def save_config(config: BaseConfig, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True))
