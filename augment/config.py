"""One typed config object that every stage receives, resolved one way for every command.

Precedence, lowest first: built-in defaults < the dataset's preset (``pipelines/<dataset>.yaml``,
shipped inside the package) < ``--config`` file < the run folder's ``run.json`` (commands that read
an existing run: train, eval, benchmark) < command-line flags. Unknown keys are refused (a typo
must not silently fall back to a default), and so is a dataset without a preset. The resolved
object is written to ``run.json`` by every stage that creates a run folder, so a run can always be
reproduced and a re-run can detect that a folder belongs to another setup. ``augment config``
prints the resolved object.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from augment.errors import AugmentError
from augment.resources import list_presets, read_preset

__all__ = ["Config", "config_from_dict", "list_presets", "resolve_config", "run_settings", "validate"]



@dataclass
class TokenConfig:
    """DisCo token training, the ``tokens`` stage (see ARCHITECTURE.md, "Stages").

    The kept vector is chosen on a fixed validation set (``val_seeds`` seeds of their own, scored
    with the generation sampler settings, no gradient), the initialiser included, so a token is
    never worse than its starting word on validation; one noisy training batch decides nothing.
    """

    init_token: str | None = None  # None: the class name's last word if it is one token, else init_fallback
    init_fallback: str = "a"
    prompts: list[str] = field(default_factory=lambda: ["A photo of a {token} {name}"])
    lr: float = 0.00125  # Adam's learning rate, unless step_size is set
    # step_size: Adam's lr becomes step_size * |init| / sqrt(D), so one step moves the vector by
    # about step_size of its initialiser's norm whatever the model's embedding scale
    step_size: float | None = None
    trust_radius: float | None = None  # keep |vector - init| <= trust_radius * |init| (None: unbounded)
    lr_schedule: str = "constant"  # or "cosine" (to 0 at max_steps)
    weight_decay: float = 0.01
    batch_size: int = 5  # images per step, one batched forward
    grad_steps: int | str = 1  # final denoising steps the gradient flows through; "all" = every step
    max_steps: int = 50
    val_seeds: int = 32  # validation images per score (fixed seeds, disjoint from training and generation)
    val_every: int = 5  # optimisation steps between validation scores
    patience: int = 3  # stop after this many validation scores without a better one
    acc_threshold: float = 0.95  # stop when the validation accuracy is strictly above this
    fresh_seeds: bool = False  # False: the same seeds every step (the reference code)
    grad_clip: float = 1.0
    steps: int | None = None  # sampler steps while training; None: generate.steps
    guidance_scale: float | None = None  # None: generate.guidance_scale
    checkpointing: bool = True  # activation checkpointing per denoising step (memory for deep grad_steps)
    n_vectors: int = 1  # vectors per token ([n, D] file; the token expands to n tokens in prompts)
    # name in the negative prompt the (up to) this many classes the guide confuses the class with
    # on the initialiser's validation images; used in training, validation and generation
    negative_confusers: int = 0

    def validate(self) -> None:
        """Refuse settings no token can be trained with, naming the setting (AugmentError)."""
        if self.lr_schedule not in ("constant", "cosine"):
            raise AugmentError(f"tokens.lr_schedule {self.lr_schedule!r} is not one of constant, cosine")
        for name in ("val_seeds", "val_every", "patience", "n_vectors", "batch_size", "max_steps"):
            if getattr(self, name) < 1:
                raise AugmentError(f"tokens.{name} must be at least 1, got {getattr(self, name)}")
        if self.negative_confusers < 0:
            raise AugmentError(f"tokens.negative_confusers must be >= 0, got {self.negative_confusers}")
        for name in ("step_size", "trust_radius"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise AugmentError(f"tokens.{name} must be positive or null, got {getattr(self, name)}")


@dataclass
class GenerateConfig:
    """Mass generation into shards."""

    prompts: list[str] = field(default_factory=lambda: ["A photo of a {token} {name}"])
    negative_prompt: str = ""
    per_class: int = 100
    steps: int = 30
    guidance_scale: float = 7.0
    batch_size: int | None = None  # None: chosen per device
    shard_size: int = 1000
    image_format: str = "jpg"
    min_confidence: float = 0.0
    max_attempts: int = 5  # per sample, with --min-confidence


#: metadata of the TrainConfig fields that say how synthetic images are mixed in and which grid
#: ``augment benchmark`` runs; one training run does not read them (see TrainConfig.trainer_fields)
_MIX_OR_GRID = {"trainer": False}


@dataclass
class TrainConfig:
    """Downstream classifier training (``augment train``) and the Table-2 grid (``augment benchmark``).

    Every setting of a training run is declared here, once: the trainer takes this object plus a
    seed and a device (:class:`augment.downstream.train.TrainSettings`), so a field added here
    is settable from a preset, a ``--config`` file and run.json without a second list to update.
    """

    arch: str = "resnet18"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    opt: str = "adamw"
    sched: str = "cosine"
    warmup_epochs: int = 0
    input_size: int = 32
    samples_per_epoch: int | None = None  # None: the mixed set's size, at least 1000 (equal compute per arm)
    hflip: float = 0.0  # off: a mirrored digit is another glyph
    pad: int = 2
    degrees: float = 10.0
    # lists, not tuples: the config is dumped as YAML (`augment config`) and round-trips through run.json
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])  # random zoom range
    label_smoothing: float = 0.0
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # input normalisation, per channel
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    eval_batch_size: int = 500
    eval_every: int = 1  # test every N epochs (0: only after the last one); the best epoch is among these
    synthetic_prob: float = field(default=0.5, metadata=_MIX_OR_GRID)
    synthetic_weight: float = field(default=1.0, metadata=_MIX_OR_GRID)
    min_confidence: float = field(default=0.0, metadata=_MIX_OR_GRID)
    k_values: list[int] = field(default_factory=lambda: [0, 3, 9, 15], metadata=_MIX_OR_GRID)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata=_MIX_OR_GRID)

    @classmethod
    def trainer_fields(cls) -> tuple[str, ...]:
        """The fields one training run reads (not the mixing and grid ones): what metrics.json
        records under ``config.train`` and what a benchmark cell's cache key hashes."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("trainer", True))

    def validate(self) -> None:
        """Refuse settings no run can use, naming the flag to change (AugmentError)."""
        if self.epochs < 1:
            raise AugmentError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise AugmentError(f"batch size must be at least 1, got {self.batch_size}")
        if self.input_size < 8:
            raise AugmentError(f"input size must be at least 8 pixels, got {self.input_size}")
        if not 0.0 <= self.hflip <= 1.0:
            raise AugmentError(f"--hflip must be a probability in [0, 1], got {self.hflip}")
        if self.eval_every < 0:
            raise AugmentError(f"eval_every must be >= 0 (0: only after the last epoch), got {self.eval_every}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise AugmentError(f"--samples-per-epoch must be at least 1, got {self.samples_per_epoch}")


@dataclass
class CasoConfig:
    """Classifier-guided semantic embeddings learned from a few real images (CASO, IJCAI 2025)."""

    k: int = 5  # real images per class the embedding is learned from
    split: str = "train"
    n_vectors: int = 2  # embedding vectors injected in place of the first tokens of an empty prompt
    init_token: str = "a"
    t0: float = 0.5  # noise level (fraction of the diffusion timesteps) the reals are noised to
    lr: float = 0.01
    max_steps: int = 40
    batch_size: int = 4
    recon_weight: float = 1.0  # latent reconstruction loss weight (keeps the edit close to the real image)
    guidance_scale: float = 3.0
    target: int | None = None  # None: class-preserving variations; an index: counterfactual edits to that class
    strength: float = 0.5  # editing: fraction of the schedule the real image is noised to
    edit_steps: int = 30
    edit_guidance: float = 3.0  # negative values reverse the edit
    edits_per_image: int = 4
    image_format: str = "png"


@dataclass
class Config:
    dataset: str = "digits"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)  # e.g. inat: {class_list: FILE}
    model: str = "embedded:tiny-digits"
    classifier: str | None = "embedded:digits-guide"
    judge: str | None = "embedded:digits-judge"
    out: str | None = None  # None: runs/<dataset>
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    workers: int = 2
    address: str | None = None
    gpus_per_worker: float = 1.0  # GPUs each Ray actor asks for when the device wants CUDA (0.5: two per GPU)
    placement_timeout: float = 300.0  # seconds to wait for a Ray node that can take an actor, then one error
    classes: str | None = None  # "3,8" or "0-9"; None = all
    resolution: int | None = None  # None: the backbone's native size
    scheduler: str = "ddim"
    tokens: TokenConfig = field(default_factory=TokenConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    caso: CasoConfig = field(default_factory=CasoConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _merge(obj: Any, data: dict[str, Any], where: str) -> None:
    """Set the fields of dataclass ``obj`` from ``data``, recursing into sections; refuse unknown keys."""
    known = {f.name: f for f in fields(obj)}
    for key, value in data.items():
        key = key.replace("-", "_")
        if key not in known:
            raise AugmentError(
                f"unknown config key {key!r} in {where}; known keys: {', '.join(sorted(known))}"
            )
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise AugmentError(f"config key {key!r} in {where} must be a mapping of {key} settings")
            _merge(current, value, f"{where} [{key}]")
        else:
            setattr(obj, key, value)


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AugmentError(f"cannot read {where}: {first}; fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise AugmentError(f"{where} must hold a YAML mapping of settings, not {type(data).__name__}")
    return data


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AugmentError(f"{what} {path} does not exist; check the path") from None
    except OSError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AugmentError(f"cannot read {what} {path}: {first}; fix the YAML syntax") from None
    return _parse_yaml(text, f"{what} {path}")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"tokens.lr": 0.1}`` -> ``{"tokens": {"lr": 0.1}}``; None values (flag not given) are dropped."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def run_settings(run: str | os.PathLike[str]) -> tuple[dict[str, Any], Path] | None:
    """The ``config`` recorded in a run folder's run.json (the token arm's, else the first other arm
    that has one) and that file's path, or None when the folder has none."""
    from augment.io.rundir import ARMS, RunDir, read_run_json

    root = RunDir(run)
    for name in ARMS:
        arm = root.arm_dir(name)
        data = read_run_json(arm)
        if data and isinstance(data.get("config"), dict):
            return data["config"], arm.run_json
    return None


def resolve_config(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    dataset: str | None = None,
    run: str | os.PathLike[str] | None = None,
) -> Config:
    """Build the config: defaults < preset of the dataset < config file < run.json < overrides.

    ``overrides`` are the command-line flags, with dotted keys (``tokens.lr``); ``None`` values are
    ignored (flag not given). ``run``: a run folder whose recorded settings apply (train, eval and
    benchmark read the run they evaluate); the result's ``out`` is then that folder.
    """
    file_data = _read_yaml(Path(config_file), "config file") if config_file else {}
    flags = _nest(overrides or {})
    found = run_settings(run) if run is not None else None
    recorded, recorded_at = found if found else ({}, None)
    ds = flags.get("dataset") or recorded.get("dataset") or dataset or file_data.get("dataset") or Config.dataset
    cfg = Config()
    _merge(cfg, _parse_yaml(read_preset(ds), f"preset {ds}.yaml"), f"preset {ds}.yaml")
    if file_data:
        _merge(cfg, file_data, str(config_file))
    if recorded:
        _merge(cfg, recorded, str(recorded_at))
    _merge(cfg, flags, "command-line options")
    cfg.dataset = ds
    if run is not None:
        cfg.out = str(run)
    if not cfg.out:
        cfg.out = f"runs/{ds}"
    validate(cfg)
    return cfg


def parse_grad_steps(value: int | str, name: str = "tokens.grad_steps") -> int | str:
    """``grad_steps`` as the sampler takes it: a positive int or ``"all"``, from ``3``, ``"3"`` or ``"all"``.

    The one check of this setting (config files, ``--grad-steps`` and the tokens stage's preflight
    all call it); ``name`` is how the message names the setting (``"--grad-steps"`` on the CLI).
    """
    if value == "all":
        return value
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise AugmentError(f"{name} {value!r} is not an integer or 'all'") from None
    if isinstance(value, int) and value >= 1:
        return value
    raise AugmentError(f"{name} must be a positive integer or 'all', got {value!r}")


def validate(cfg: Config) -> None:
    cfg.tokens.grad_steps = parse_grad_steps(cfg.tokens.grad_steps)
    cfg.tokens.validate()
    if cfg.generate.image_format not in ("jpg", "png", "webp"):
        raise AugmentError(f"image format {cfg.generate.image_format!r} is not one of jpg, png, webp")
    if cfg.dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise AugmentError(f"--dtype {cfg.dtype!r} is not one of auto, float32, float16, bfloat16")
    g = cfg.gpus_per_worker
    # Ray places fractions of one GPU or whole GPUs, nothing in between
    if isinstance(g, bool) or not isinstance(g, int | float) or not (0 < g <= 1 or (g > 1 and g == int(g))):
        raise AugmentError(f"gpus_per_worker must be a fraction of one GPU (0 < x <= 1) or a whole number, got {g!r}")
    t = cfg.placement_timeout
    if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
        raise AugmentError(f"placement_timeout must be a positive number of seconds, got {t!r}")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``run.json``'s ``config`` entry (for stages that read a run folder)."""
    cfg = Config()
    _merge(cfg, data, "run.json")
    return cfg


def replace(cfg: Config, **changes: Any) -> Config:
    return dataclasses.replace(cfg, **changes)
