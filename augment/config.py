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
import math
import os
import types
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from augment.errors import AugmentError
from augment.prompts import template_fields
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
        for name in ("val_seeds", "val_every", "patience", "n_vectors", "batch_size"):
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
    min_confidence: float = 0.0  # > 0: rejection sampling, only images the guide gives this confidence are kept
    max_attempts: int = 5  # with --min-confidence: a class may draw max_attempts x its images (per shard), then stops
    soft_labels: int = 5  # top-k of the guide's probabilities stored per sample (0: none; >= classes: the full vector)


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
    distill: bool = field(default=False, metadata=_MIX_OR_GRID)  # synthetic samples learn the guide's soft labels
    distill_temperature: float = field(default=1.0, metadata=_MIX_OR_GRID)  # softens the stored targets (p ** 1/T)
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
        if not self.distill_temperature > 0:
            raise AugmentError(f"--distill-temperature must be > 0, got {self.distill_temperature}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise AugmentError(f"--samples-per-epoch must be at least 1, got {self.samples_per_epoch}")


@dataclass
class CasoConfig:
    """Classifier-guided semantic embeddings learned from a few real images (CASO, IJCAI 2025).

    Defaults follow the official code (Chang-yuanyuan/CASO: ``configs/config.py``, ``trainer.py``)
    where it sets a value: one vector in place of the first token of the empty prompt, t0 = timestep
    401 of 1000 (``all_times[-30]`` of its 50 DDIM steps), guidance 10, reconstruction weight 0
    (``0 * mse_loss(pred_z0, z0)``), AdamW lr 1e-2 / weight decay 1e-2, batch 2. ``max_steps``
    replaces its 20 epochs over the training folder (see the field's note).
    """

    k: int = 5  # real images per class: the embeddings learn from all classes' k reals; each real is edited
    split: str = "train"
    kshot_seed: int | None = None  # seed of the k-shot draw (None: the run seed); the benchmark sets its cell's
    n_vectors: int = 1  # embedding vectors injected in place of the first tokens of an empty prompt
    init_token: str = "a"
    t0: float = 0.4  # noise level (fraction of the diffusion timesteps) the reals are noised to
    lr: float = 0.01
    weight_decay: float = 0.01
    # The official code runs 20 epochs (20 x N/2 steps: 300 for k=3 on 10 classes, 1500 for k=15);
    # a fixed count bounds the per-draw cost of the benchmark's caso arm on a CPU. Measured on the
    # embedded default (benchmarks/caso_edits.py, k=3, 30 reals): one-step guide accuracy towards
    # the target on the reals, mean of the 10 targets, first -> last 5 batches: 0.07 -> 0.18 after
    # 20 steps, 0.07 -> 0.29 after 100 (~22 s per target on one shared CPU thread); more steps
    # were not measured.
    max_steps: int = 100
    batch_size: int = 2
    recon_weight: float = 0.0  # latent reconstruction loss weight (the paper's lambda; the code's 0)
    guidance_scale: float = 10.0  # CFG scale of the one-step x0 prediction while learning
    # which embeddings edit which reals: "self" (each real towards its own class), "all" (each real
    # towards every class), "B" or "A->B" (every real / the reals of A towards B, labelled B);
    # "+" concatenates embeddings in one condition ("A->B+C", the multi-attribute edit)
    target: str = "self"
    edit_mode: str = "ddim"  # ddim: the paper's DDIM inversion + guided denoising; sdedit: noise + denoise
    strength: float = 0.5  # editing: fraction of the schedule the real image is inverted / noised to
    edit_steps: int = 50  # the official code's NUM_DDIM_STEPS
    edit_guidance: float = 10.0  # negative values reverse the edit (the edit keeps the source's label)
    guided_step: int | None = None  # guide one denoising step only (index among the steps that run)
    edits_per_image: int = 1  # per condition; > 1 needs sdedit (a ddim edit is deterministic)
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
    threads: int = 1  # torch CPU threads per work unit, inline and on every actor: the same bytes whatever --workers
    classes: str | None = None  # "3,8" or "0-9"; None = all
    resolution: int | None = None  # None: the backbone's native size
    scheduler: str = "ddim"
    tokens: TokenConfig = field(default_factory=TokenConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    caso: CasoConfig = field(default_factory=CasoConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the sections of a Config, by key
_SECTIONS: dict[str, type] = {"tokens": TokenConfig, "generate": GenerateConfig, "train": TrainConfig, "caso": CasoConfig}


def _merge(obj: Any, data: dict[str, Any], where: str, prefix: str = "") -> None:
    """Set the fields of dataclass ``obj`` from ``data``, recursing into sections; refuse unknown
    keys and values of the wrong type, naming the dotted key, the value and ``where`` it came from
    (a typo or a quoted number must stop the run here, not as a TypeError deep in a stage)."""
    known = {f.name: f for f in fields(obj)}
    hints = get_type_hints(type(obj))
    for key, value in data.items():
        key = str(key).replace("-", "_")
        dotted = prefix + key
        if key not in known:
            section = f" [{prefix[:-1]}]" if prefix else ""
            raise AugmentError(f"unknown config key {key!r} in {where}{section}{_misplaced_hint(key, prefix)}; "
                               f"known keys: {', '.join(sorted(known))}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise AugmentError(f"config key {key!r} in {where} must be a mapping of {key} settings "
                                   f"(indented under '{key}:'), not {value!r}")
            _merge(current, value, where, f"{dotted}.")
        else:
            setattr(obj, key, _typed(value, hints[key], dotted, where))


def _misplaced_hint(key: str, prefix: str) -> str:
    """``" (did you mean generate.per_class?)"`` when a section's key is given at the wrong level."""
    if prefix:
        return ""
    homes = [name for name, section in _SECTIONS.items() if key in {f.name for f in fields(section)}]
    return f" (did you mean {homes[0]}.{key}, indented under '{homes[0]}:'?)" if homes else ""


def _type_name(hint: Any) -> str:
    """How an error names a type: ``an integer``, ``a list of strings``, ``an integer or null``."""
    args = get_args(hint)
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if get_origin(hint) is list:
        return f"a list of {_type_name(args[0]).split(' ', 1)[1]}s"
    if get_origin(hint) is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(hint, str(hint))


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as YAML or a flag gives it) is of the field type ``hint``."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is float:  # an integer is a number; true/false is not
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def _typed(value: Any, hint: Any, key: str, where: str) -> Any:
    """``value`` if it is of type ``hint``, else the one-line error naming key, value and type."""
    if not _fits(value, hint):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        quote = f" (quote it: '{value}')" if _fits(str(value), hint) and isinstance(value, int | float) else ""
        raise AugmentError(f"config key {key} = {shown} in {where} must be {_type_name(hint)}{quote}; fix the value")
    return value


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise AugmentError(f"cannot read {where}: {problem}{at}; fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise AugmentError(f"{where} must hold a YAML mapping of settings, not {type(data).__name__}")
    return data


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AugmentError(f"{what} {path} does not exist; check the path") from None
    except UnicodeDecodeError as e:
        raise AugmentError(f"{what} {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                           "save it as UTF-8 YAML") from None
    except OSError as e:
        raise AugmentError(f"cannot read {what} {path} ({e.strerror or type(e).__name__}); check the path") from None
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
        record = read_run_json(arm)
        if record is not None and record.has("config"):
            return record.config, arm.run_json
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
        _merge(cfg, file_data, f"config file {config_file}")
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


#: the most samples one arm of a run may plan (its plan is held in memory, one entry per sample):
#: ten million is ten times ImageNet-1k's training set; a larger set is several runs (--classes)
MAX_SAMPLES = 10_000_000


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple[Any, str]:
    """A range test and how an error says it (``from 1 to 10000``); NaN never passes."""
    def test(v: float) -> bool:
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    def num(x: float) -> str:
        return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"
    if hi == math.inf:
        return test, f"{'greater than' if lo_open else 'at least'} {num(lo)}"
    return test, f"{'above' if lo_open else 'from'} {num(lo)} {'and below' if hi_open else 'to'} {num(hi)}"


_INF = math.inf
#: value ranges of numeric settings (types are checked on merge): dotted key -> (test, description).
#: Upper bounds are what no run can mean (a typo, a unit mix-up), and keep plans bounded in memory.
_RANGES: dict[str, tuple[Any, str]] = {
    "seed": _between(0, 2**63 - 1),
    "workers": _between(0, 100_000),
    "threads": _between(1, 1024),
    "resolution": _between(8, 16384),
    "tokens.lr": _between(0, _INF, lo_open=True),
    "tokens.weight_decay": _between(0, _INF),
    "tokens.batch_size": _between(1, 4096),
    "tokens.max_steps": _between(0, 1_000_000),
    "tokens.patience": _between(1, 1_000_000),
    "tokens.acc_threshold": _between(0, _INF),  # above 1: never stop early (tests use 1.1)
    "tokens.grad_clip": _between(0, _INF),
    "tokens.steps": _between(1, 10_000),
    "generate.per_class": _between(1, MAX_SAMPLES),
    "generate.steps": _between(1, 10_000),
    "generate.batch_size": _between(1, 4096),
    "generate.shard_size": _between(1, 1_000_000),
    "generate.min_confidence": _between(0, 1, hi_open=True),
    "generate.max_attempts": _between(1, 1000),
    "generate.soft_labels": _between(0, 100_000),
    "caso.k": _between(1, 100_000),
    "caso.n_vectors": _between(1, 64),
    "caso.t0": _between(0, 1, lo_open=True, hi_open=True),
    "caso.lr": _between(0, _INF, lo_open=True),
    "caso.max_steps": _between(0, 1_000_000),
    "caso.batch_size": _between(1, 4096),
    "caso.recon_weight": _between(0, _INF),
    "caso.strength": _between(0, 1, lo_open=True),
    "caso.edit_steps": _between(1, 10_000),
    "caso.edits_per_image": _between(1, 10_000),
}
#: the flag that sets a key, where it differs from ``--<leaf with dashes>`` or has none
_FLAGS = {"generate.soft_labels": None, "tokens.batch_size": None, "tokens.patience": None, "tokens.acc_threshold": None, "tokens.grad_clip": None,
          "tokens.steps": None, "tokens.weight_decay": None, "resolution": None, "caso.n_vectors": None,
          "caso.t0": None, "caso.lr": None, "caso.batch_size": None, "caso.recon_weight": None, "caso.edit_steps": None}
_CHOICES = {"generate.image_format": ("jpg", "png", "webp"), "caso.image_format": ("jpg", "png", "webp"),
            "caso.edit_mode": ("ddim", "sdedit"), "dtype": ("auto", "float32", "float16", "bfloat16")}
#: the placeholders a prompt template may use, and the ones each list's templates must contain
_PLACEHOLDERS = ("token", "name")
# ``{name}`` is optional: without it the token stands for the class, and the plain-prompt arm puts
# the class name in the token's place (augment.prompts.render_prompt)
_TEMPLATES = {"tokens.prompts": ("token",), "generate.prompts": ("token",)}


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _key_name(key: str) -> str:
    """``generate.per_class (--per-class)``: the key, and the flag that sets it where there is one."""
    flag = _FLAGS.get(key, "--" + key.rsplit(".", 1)[-1].replace("_", "-"))
    return f"{key} ({flag})" if flag else key


def check_templates(templates: Any, key: str, required: tuple[str, ...]) -> None:
    """Refuse a prompt list no stage can fill: empty, not strings, a placeholder other than
    ``{token}``/``{name}``, bad braces, or one of ``required`` missing (checked with the config,
    so before any model loads)."""
    if not isinstance(templates, list) or not templates:
        raise AugmentError(f"{key} must list at least one prompt template, e.g. ['A photo of a {{token}} {{name}}']")
    for t in templates:
        try:
            named = template_fields(t)
            t.format(token="t", name="n")
        except (ValueError, KeyError, IndexError, AttributeError) as e:
            unknown = sorted(named - set(_PLACEHOLDERS)) if "named" in locals() else []
            why = f"placeholder {{{unknown[0]}}}" if unknown else f"{type(e).__name__}: {e}"
            raise AugmentError(f"{key} template {t!r} cannot be filled ({why}); use only {{token}} and {{name}}, "
                               "and double literal braces ({{{{ }}}})") from None
        missing = [f for f in required if f not in named]
        if missing:
            raise AugmentError(f"{key} template {t!r} has no {{{missing[0]}}} placeholder; each template needs "
                               + " and ".join(f"{{{f}}}" for f in required))


def validate(cfg: Config) -> None:
    """Refuse values no stage can use, naming the key (and its flag), the value and the valid range.

    Types were checked as the layers merged (:func:`_merge`); this checks ranges, choices and prompt
    templates of the resolved config, before any model loads or any folder is made."""
    cfg.tokens.grad_steps = parse_grad_steps(cfg.tokens.grad_steps)
    cfg.tokens.validate()
    for key, (test, desc) in _RANGES.items():
        value = _get(cfg, key)
        if value is not None and not test(value):
            raise AugmentError(f"{_key_name(key)} must be {desc}, got {value!r}")
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise AugmentError(f"{_key_name(key)} {value!r} is not one of {', '.join(choices)}")
    for key, required in _TEMPLATES.items():
        check_templates(_get(cfg, key), key, required)
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
