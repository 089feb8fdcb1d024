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

import copy
import dataclasses
import json
import math
import os
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from augment.errors import AugmentError
from augment.prompts import template_fields
from augment.resources import list_presets, read_preset

__all__ = ["Config", "Setting", "compat_keys", "config_from_dict", "list_presets", "load_yaml", "resolve_config", "setting",
           "settings_of", "validate"]

#: the commands that resolve a config: each takes the common settings' flags and --set
CONFIG_COMMANDS = ("tokens", "generate", "caso", "build", "train", "eval", "benchmark", "guide", "config")
#: the commands that take the generation flags (build and config show what build would run with)
_GENERATE_CMDS = ("generate", "build", "config")
_STAGES = ("tokens", "generate", "caso", "build", "config")
_TRAIN_CMDS = ("train", "benchmark")
#: the commands that train one classifier: train, benchmark, and guide (a guide from the k-shot reals)
_TRAINER_CMDS = (*_TRAIN_CMDS, "guide")
_INF = math.inf
#: the most samples one arm of a run may plan (its plan is held in memory, one entry per sample):
#: ten million is ten times ImageNet-1k's training set; a larger set is several runs (--classes)
MAX_SAMPLES = 10_000_000


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> tuple[Any, str]:
    """A range test and how an error says it (``from 1 to 10000``); NaN and infinities never pass
    (no setting can use them: an unbounded range means any finite number)."""
    def test(v: float) -> bool:
        return math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    def num(x: float) -> str:
        return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"
    if hi == math.inf:
        return test, f"{'greater than' if lo_open else 'at least'} {num(lo)}"
    return test, f"{'above' if lo_open else 'from'} {num(lo)} {'and below' if hi_open else 'to'} {num(hi)}"


@dataclass(frozen=True)
class Setting:
    """What a config field declares about itself, once: everything else (the click options of every
    command, the range and choice checks, the keys that block a resume) is generated from it.

    ``range``: a (test, description) pair from :func:`_between` (or any test); ``error``: the
    message when the test fails, with ``{key}`` and ``{value}`` (default: ``<key> (<flag>) must be
    <description>, got <value>``). ``flag``: the command-line flag (None: none); ``commands``: the
    commands that take it; ``order``: its place in their ``--help`` (default: declaration order);
    ``cli_type``: what the flag takes when it is not the annotation's type (``str``, or ``"path"`` / ``"file"``); ``parse``: turns the flag's text
    into the value (and refuses bad text, naming the flag). ``resume``: the stages whose resume it
    blocks when changed (their ``COMPAT_KEYS``, :func:`compat_keys`); ``templates``: the placeholders
    each prompt template must hold; ``trainer``: whether one training run reads it
    (:meth:`TrainConfig.trainer_fields`); ``omit_default``: left out of the recorded config
    (run.json, metrics.json, benchmark cell keys) while it holds its default, so a setting added
    later leaves the files of runs that do not use it as they were (:func:`omit_defaults`)."""

    help: str | None = None
    flag: str | None = None
    commands: tuple[str, ...] = ()
    order: float | None = None
    cli_type: Any = None
    parse: Callable[[str], Any] | None = None
    range: tuple[Callable[[Any], bool], str] | None = None
    error: str | None = None
    choices: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None
    resume: tuple[str, ...] = ()
    trainer: bool = True
    omit_default: bool = False

    def flag_of(self, key: str) -> str | None:
        """The setting's flag: the declared one, else ``--<leaf-with-dashes>`` when a command takes
        it (``generate.per_class`` -> ``--per-class``), else None."""
        if self.flag or not self.commands:
            return self.flag
        return "--" + key.rsplit(".", 1)[-1].replace("_", "-")

    def key_name(self, key: str) -> str:
        """``generate.per_class (--per-class)``: the key, and the flag that sets it where there is one."""
        flag = self.flag_of(key)
        return f"{key} ({flag})" if flag else key

    def check(self, key: str, value: Any) -> None:
        """Refuse ``value`` outside the declared choices, range or template rules (AugmentError
        naming the key, its flag, the value and what is valid)."""
        if self.choices is not None and value not in self.choices:
            raise AugmentError(f"{self.key_name(key)} {value!r} is not one of {', '.join(self.choices)}")
        if self.range is not None and value is not None and not self.range[0](value):
            if self.error:
                raise AugmentError(self.error.format(key=key, value=value))
            raise AugmentError(f"{self.key_name(key)} must be {self.range[1]}, got {value!r}")
        if self.templates is not None:
            check_templates(value, key, self.templates)


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            range: tuple[Callable[[Any], bool], str] | None = None, choices: tuple[str, ...] | None = None,
            help: str | None = None, flag: str | None = None, commands: tuple[str, ...] = (), **more: Any) -> Any:
    """A dataclass field declaring one setting (:class:`Setting`). A flag defaults to
    ``--<name-with-dashes>`` when ``commands`` are given; list and dict defaults are copied per
    instance. Adding a setting is adding one of these (ARCHITECTURE.md, "Adding a setting")."""
    if isinstance(default, list | dict):
        default_factory, default = (lambda d=default: copy.deepcopy(d)), dataclasses.MISSING
    meta = Setting(help=help, flag=flag, commands=commands, range=range, choices=choices, **more)
    return field(default=default, default_factory=default_factory, metadata={"setting": meta})


def _grad_steps_flag(value: str) -> int | str:
    return parse_grad_steps(value, "--grad-steps")


def _json_object(value: str) -> dict[str, Any]:
    """--arch-kwargs: a JSON object of keyword arguments."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise AugmentError(f"--arch-kwargs is not valid JSON ({e.msg}); e.g. '{{\"channels\": [16, 32, 64, 128]}}'") from None
    if not isinstance(parsed, dict):
        raise AugmentError("--arch-kwargs must be a JSON object of keyword arguments")
    return parsed


def synthetic_prob_flag(value: str) -> float | None:
    """--synthetic-prob: a probability, or None for 'natural' (the synthetic share of the union)."""
    if value.strip().lower() in ("natural", "none"):
        return None
    try:
        return float(value)
    except ValueError:
        raise AugmentError(f"--synthetic-prob {value!r} is not a number in [0, 1] or 'natural'") from None


def _numbers(n: int | None, each: tuple[Any, str]) -> tuple[Any, str]:
    """A list test: ``n`` numbers (None: at least one), each passing ``each`` (a :func:`_between`)."""
    test, desc = each
    def ok(v: list[Any]) -> bool:
        return (len(v) == n if n is not None else len(v) >= 1) and all(test(x) for x in v)
    return ok, f"{n if n is not None else 'one or more'} numbers, each {desc}"


def _zoom(v: list[float]) -> bool:
    """``train.scale``: a random-zoom range ``[low, high]``, both positive, low <= high."""
    return len(v) == 2 and all(math.isfinite(x) and x > 0 for x in v) and v[0] <= v[1]


_OPTIMIZERS_FAST = ("adamw", "adam", "sgd", "momentum", "nesterov", "rmsprop", "lamb", "lars", "lion", "adagrad")


def _optimizer(name: str) -> bool:
    """Whether timm's ``create_optimizer_v2`` knows ``name`` (a ``lookahead_`` prefix allowed); the
    common names pass without importing timm."""
    base = name.lower().removeprefix("lookahead_")
    if base in _OPTIMIZERS_FAST:
        return True
    import timm.optim

    return base in timm.optim.list_optimizers()


#: the learning-rate schedules timm's ``create_scheduler_v2`` builds and the trainer can step
#: (``plateau`` needs a metric each epoch, which the trainer does not pass)
SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "constant", "wsd", "rsqrt", "none")
#: the split names any dataset has (digits/cub: train, test; folder: train, val, valid, validation,
#: test; inat: train, train_mini, val; imagenet: train, val); the caso stage checks the dataset's own
SPLITS = ("train", "train_mini", "val", "valid", "validation", "test")
#: the sampler names ``models.backbone.SCHEDULERS`` maps to diffusers classes (a test keeps them equal)
SAMPLERS = ("ddim", "dpm", "euler", "pndm", "ddpm")
#: classifier-free guidance scales a sampler can use (0: unguided; the papers use 1.5 to 15)
_GUIDANCE = _between(0, 100)


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (a number, or numbers inside lists and mappings)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _gpus_fit(g: float) -> bool:
    """Ray places fractions of one GPU or whole GPUs, nothing in between."""
    return 0 < g <= 1 or (g > 1 and g == int(g))


_RUN_STAGES = ("tokens", "generate", "caso")
_TEMPLATE_HELP = ["A photo of a {token} {name}"]


@dataclass
class TokenConfig:
    """DisCo token training, the ``tokens`` stage (see ARCHITECTURE.md, "Stages").

    The kept vector is chosen on a fixed validation set (``val_seeds`` seeds of their own, scored
    with the generation sampler settings, no gradient), the initialiser included, so a token is
    never worse than its starting word on validation; one noisy training batch decides nothing.
    """

    # None: the class name's last word if it is one token, else init_fallback
    init_token: str | None = setting(None, resume=("tokens",))
    init_fallback: str = setting("a", resume=("tokens",))
    prompts: list[str] = setting(_TEMPLATE_HELP, templates=("token",), resume=("tokens",))
    # Adam's learning rate, unless step_size is set
    lr: float = setting(0.00125, range=_between(0, _INF, lo_open=True), resume=("tokens",),
                        help="Learning rate of the token embedding.", commands=("tokens",))
    # step_size: Adam's lr becomes step_size * |init| / sqrt(D), so one step moves the vector by
    # about step_size of its initialiser's norm whatever the model's embedding scale
    step_size: float | None = setting(None, range=(lambda v: v > 0, ""), resume=("tokens",),
                                      error="tokens.step_size must be positive or null, got {value}")
    # keep |vector - init| <= trust_radius * |init| (None: unbounded)
    trust_radius: float | None = setting(None, range=(lambda v: v > 0, ""), resume=("tokens",),
                                         error="tokens.trust_radius must be positive or null, got {value}")
    lr_schedule: str = setting("constant", choices=("constant", "cosine"), resume=("tokens",))  # cosine: to 0 at max_steps
    weight_decay: float = setting(0.01, range=_between(0, _INF), resume=("tokens",))
    batch_size: int = setting(5, range=_between(1, 4096), resume=("tokens",))  # images per step, one batched forward
    # final denoising steps the gradient flows through; "all" = every step
    grad_steps: int | str = setting(1, resume=("tokens",), cli_type=str, parse=_grad_steps_flag, order=-1,
                                    help="Final denoising steps the gradient flows through: an integer or 'all'.",
                                    commands=("tokens", "build", "config"))
    max_steps: int = setting(50, range=_between(0, 1_000_000), help="Most optimisation steps per class.", resume=("tokens",),
                             commands=("tokens",))
    # validation images per score (fixed seeds, disjoint from training and generation)
    val_seeds: int = setting(32, range=_between(1, _INF), resume=("tokens",))
    val_every: int = setting(5, range=_between(1, _INF), resume=("tokens",))  # optimisation steps between validation scores
    patience: int = setting(3, range=_between(1, 1_000_000), resume=("tokens",))  # stop after this many validation scores without a better one
    # stop when the validation accuracy is strictly above this; above 1: never stop early (tests use 1.1)
    acc_threshold: float = setting(0.95, range=_between(0, _INF), resume=("tokens",))
    fresh_seeds: bool = setting(False, resume=("tokens",))  # False: the same seeds every step (the reference code)
    grad_clip: float = setting(1.0, range=_between(0, _INF), resume=("tokens",))
    steps: int | None = setting(None, range=_between(1, 10_000), resume=("tokens",))  # sampler steps while training; None: generate.steps
    guidance_scale: float | None = setting(None, range=_GUIDANCE, resume=("tokens",))  # None: generate.guidance_scale
    # gradient checkpointing inside the UNet blocks and the VAE decoder (diffusers' own): the token
    # step keeps ~1/8 of the activations for backward (docs/memory.md); same images and gradients
    checkpointing: bool = True
    # vectors per token ([n, D] file; the token expands to n tokens in prompts)
    n_vectors: int = setting(1, range=_between(1, _INF), resume=("tokens",))
    # name in the negative prompt the (up to) this many classes the guide confuses the class with
    # on the initialiser's validation images; used in training, validation and generation
    negative_confusers: int = setting(0, range=_between(0, _INF), resume=("tokens",),
                                      error="tokens.negative_confusers must be >= 0, got {value}")

    def validate(self) -> None:
        """Refuse settings no token can be trained with, naming the setting (AugmentError)."""
        check_section(self, "tokens.")


@dataclass
class GenerateConfig:
    """Mass generation into shards."""

    prompts: list[str] = setting(_TEMPLATE_HELP, templates=("token",), resume=("generate",))
    negative_prompt: str = setting("", resume=("generate",))
    per_class: int = setting(100, range=_between(1, MAX_SAMPLES), commands=_GENERATE_CMDS,
                             help="Images per class (raising it later only adds samples).")
    steps: int = setting(30, range=_between(1, 10_000), resume=("generate",), commands=_GENERATE_CMDS,
                         help="Denoising steps.")
    guidance_scale: float = setting(7.0, range=_GUIDANCE, resume=("generate",), commands=_GENERATE_CMDS,
                                    help="Classifier-free guidance scale.")
    batch_size: int | None = setting(None, range=_between(1, 4096), resume=("generate",),  # None: chosen per device
                                     commands=_GENERATE_CMDS, order=2.3,
                                     help="Images per sampler call (default: chosen per device).")
    shard_size: int = setting(1000, range=_between(1, 1_000_000), resume=("generate",), commands=_GENERATE_CMDS,
                              order=2.1, help="Samples per shard (default 1000).")
    image_format: str = setting("jpg", choices=("jpg", "png", "webp"), resume=("generate",), commands=_GENERATE_CMDS,
                                order=2.2, help="Encoding of the images in the shards.")
    # > 0: rejection sampling, only images the guide gives this confidence are kept
    min_confidence: float = setting(
        0.0, range=_between(0, 1, hi_open=True), resume=("generate",), commands=_GENERATE_CMDS,
        help="Rejection sampling: keep only images the guide gives at least this confidence; each class "
             "draws new seeds until it has --per-class images or its budget is spent (0 = keep all).")
    # with --min-confidence: a class may draw max_attempts x its images (per shard), then stops
    max_attempts: int = setting(5, range=_between(1, 1000), resume=("generate",), commands=_GENERATE_CMDS,
                                help="Under --min-confidence: a class's budget, in draws per requested image (default 5).")
    # top-k of the guide's probabilities stored per sample (0: none; >= classes: the full vector)
    soft_labels: int = setting(5, range=_between(0, 100_000), resume=("generate",))
    # speed (augment/models/speed.py): kernels, not samples, change, so no resume is blocked; CUDA only
    channels_last: bool = setting(True, omit_default=True)  # the UNet and VAE in channels_last memory format
    fuse_qkv: bool = setting(True, omit_default=True)  # diffusers' fused QKV projections
    compile: bool = setting(
        False, omit_default=True, commands=_GENERATE_CMDS, order=2.4,
        help="torch.compile the UNet for generation (CUDA: faster batches after minutes of compiling; default off).")


@dataclass
class TrainConfig:
    """Downstream classifier training (``augment train``) and the Table-2 grid (``augment benchmark``).

    Every setting of a training run is declared here, once: the trainer takes this object plus a
    seed and a device (:class:`augment.downstream.train.TrainSettings`), so a field added here
    is settable from a preset, a ``--config`` file and run.json without a second list to update.
    Fields with ``trainer=False`` say how synthetic images are mixed in and which grid ``augment
    benchmark`` runs; one training run does not read them (see :meth:`trainer_fields`).
    """

    arch: str = setting("resnet18", commands=_TRAINER_CMDS,
                        help="timm architecture of the classifier to train (default: train.arch).")
    arch_kwargs: dict[str, Any] = setting({}, commands=_TRAINER_CMDS, cli_type=str, parse=_json_object,
                                          help='JSON of extra timm.create_model kwargs, e.g. \'{"channels": [16,32,64,128]}\'.')
    # None: from scratch (digits); presets of real datasets start from ImageNet weights
    pretrained: str | None = setting(
        None, commands=_TRAINER_CMDS, order=5.7, omit_default=True,
        range=(lambda v: v is None or (isinstance(v, str) and bool(v.strip())), "a timm name or timm:<arch>@<file>"),
        help="Start from these weights: a timm name with its tag (resnet50.a1_in1k) read from the local Hugging Face "
             "cache, or timm:<arch>@<file> (default: train.pretrained; none: from scratch).")
    # a few reals per class: fitting only the head on frozen pretrained features over-fits less
    linear_probe: bool = setting(
        False, commands=_TRAINER_CMDS, order=5.8, omit_default=True,
        help="Train only the classifier head on frozen pretrained features (a linear probe) (default: train.linear_probe).")
    checkpoint: str | None = setting(None, commands=("train",), order=100,
                                     cli_type="file",
                                     help="Start from this state dict (.safetensors/.pth) instead of scratch.")
    epochs: int = setting(30, range=_between(1, _INF), error="--epochs must be at least 1, got {value}",
                          commands=_TRAINER_CMDS, help="Training epochs (default: train.epochs).")
    batch_size: int = setting(64, range=_between(1, _INF), commands=_TRAINER_CMDS,
                              help="Batch size (default: train.batch_size).")
    # 0 trains nothing (the pretrained tests freeze the weights that way); NaN/inf and < 0 are refused
    lr: float = setting(1e-3, range=_between(0, _INF), commands=_TRAINER_CMDS,
                        help="Learning rate (default: train.lr).")
    weight_decay: float = setting(0.05, range=_between(0, _INF))
    # any optimizer timm's create_optimizer_v2 knows
    opt: str = setting("adamw", range=(_optimizer, "an optimizer timm knows (adamw, sgd, momentum, lamb, ...)"))
    sched: str = setting("cosine", choices=SCHEDULES)
    warmup_epochs: int = setting(0, range=_between(0, 100_000))
    # 2,048 px: the largest side timm's models are trained at is well below (ImageNet models: 224-800)
    input_size: int = setting(32, range=_between(8, 2048), commands=_TRAINER_CMDS, order=5.6,
                              help="Image side the classifier is trained at (default: train.input_size).")
    # None: the mixed set's size, at least 1000 (equal compute per arm)
    samples_per_epoch: int | None = setting(
        None, range=_between(1, _INF), error="--samples-per-epoch must be at least 1, got {value}",
        commands=_TRAINER_CMDS, order=3.5, help="Samples drawn per epoch (default: the mixed set's size, at least 1000).")
    # off: a mirrored digit is another glyph
    hflip: float = setting(0.0, range=_between(0, 1), error="--hflip must be a probability in [0, 1], got {value}",
                           commands=_TRAINER_CMDS, order=5.5,
                           help="Horizontal-flip probability (default 0: digits must not be mirrored).")
    pad: int = setting(2, range=_between(0, 1024))  # random shift, px
    degrees: float = setting(10.0, range=_between(0, 180))  # random rotation, +-
    # lists, not tuples: the config is dumped as YAML (`augment config`) and round-trips through run.json
    scale: list[float] = setting([0.9, 1.1], range=(_zoom, "[low, high]: two numbers above 0, low <= high"))
    label_smoothing: float = setting(0.0, range=_between(0, 1, hi_open=True))
    # input normalisation, per channel (RGB); a std of 0 divides by zero (a model that predicts one class)
    mean: list[float] = setting([0.5, 0.5, 0.5], range=_numbers(3, _between(-1000, 1000)))
    std: list[float] = setting([0.5, 0.5, 0.5], range=_numbers(3, _between(0, _INF, lo_open=True)))
    eval_batch_size: int = setting(500, range=_between(1, 1_000_000))
    # test every N epochs (0: only after the last one); the best epoch is among these
    eval_every: int = setting(1, range=_between(0, _INF),
                              error="train.eval_every must be >= 0 (0: only after the last epoch), got {value}")
    synthetic_prob: float = setting(
        0.5, trainer=False, range=_between(0, 1), error="--synthetic-prob must be in [0, 1], got {value}",
        commands=_TRAIN_CMDS, cli_type=str, parse=synthetic_prob_flag,
        help="Probability that a drawn sample is synthetic, or 'natural' (default: train.synthetic_prob).")
    synthetic_weight: float = setting(
        1.0, trainer=False, range=_between(0, _INF), error="--synthetic-weight must be >= 0, got {value}",
        commands=_TRAIN_CMDS, help="Loss weight of synthetic samples (default: train.synthetic_weight).")
    min_confidence: float = setting(
        0.0, trainer=False, range=_between(0, 1), error="--min-confidence must be in [0, 1], got {value}",
        commands=_TRAIN_CMDS, help="Drop synthetic images whose guide_confidence is lower (default: train.min_confidence).")
    # synthetic samples learn the guide's soft labels
    distill: bool = setting(
        False, trainer=False, commands=("train",), order=101,
        help="Train the synthetic images on the guide's soft labels (their manifests' top-k) instead of their "
             "class; real images keep their labels (default: train.distill).")
    # softens the stored targets (p ** 1/T)
    distill_temperature: float = setting(
        1.0, trainer=False, range=(lambda v: v > 0, ""), error="--distill-temperature must be > 0, got {value}",
        commands=_TRAIN_CMDS,
        help="Temperature of the soft labels synthetic images learn with distillation (default: train.distill_temperature).")
    k_values: list[int] = setting([0, 3, 9, 15], trainer=False, range=_numbers(None, _between(0, 1_000_000)))
    seeds: list[int] = setting([0, 1, 2], trainer=False, range=_numbers(None, _between(0, 2**63 - 1)))

    @classmethod
    def trainer_fields(cls) -> tuple[str, ...]:
        """The fields one training run reads (not the mixing and grid ones): what metrics.json
        records under ``config.train`` and what a benchmark cell's cache key hashes."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("setting", Setting()).trainer)

    def validate(self) -> None:
        """Refuse settings no run can use, naming the flag to change (AugmentError)."""
        check_section(self, "train.")
        if self.linear_probe and not (self.pretrained or self.checkpoint):
            raise AugmentError("--linear-probe freezes all but the head, so it needs trained features: "
                               "give --pretrained (or train.checkpoint), or drop --linear-probe")


@dataclass
class CasoConfig:
    """Classifier-guided semantic embeddings learned from a few real images (CASO, IJCAI 2025).

    Defaults follow the official code (Chang-yuanyuan/CASO: ``configs/config.py``, ``trainer.py``)
    where it sets a value: one vector in place of the first token of the empty prompt, t0 = timestep
    401 of 1000 (``all_times[-30]`` of its 50 DDIM steps), guidance 10, reconstruction weight 0
    (``0 * mse_loss(pred_z0, z0)``), AdamW lr 1e-2 / weight decay 1e-2, batch 2. ``max_steps``
    replaces its 20 epochs over the training folder (see the field's note).
    """

    # real images per class: the embeddings learn from all classes' k reals; each real is edited
    k: int = setting(5, range=_between(1, 100_000), commands=("caso",),
                     help="Real images per class: the embeddings learn from all classes' k reals, each is edited.")
    split: str = setting("train", choices=SPLITS)  # the dataset must have it (checked by the caso stage)
    # seed of the k-shot draw (None: the run seed); the benchmark sets its cell's
    kshot_seed: int | None = setting(None, range=_between(0, 2**63 - 1))
    # embedding vectors injected in place of the first tokens of an empty prompt
    n_vectors: int = setting(1, range=_between(1, 64))
    init_token: str = "a"
    # noise level (fraction of the diffusion timesteps) the reals are noised to
    t0: float = setting(0.4, range=_between(0, 1, lo_open=True, hi_open=True))
    lr: float = setting(0.01, range=_between(0, _INF, lo_open=True))
    weight_decay: float = setting(0.01, range=_between(0, _INF))
    # The official code runs 20 epochs (20 x N/2 steps: 300 for k=3 on 10 classes, 1500 for k=15);
    # a fixed count bounds the per-draw cost of the benchmark's caso arm on a CPU. Measured on the
    # embedded default (benchmarks/caso_edits.py, k=3, 30 reals): one-step guide accuracy towards
    # the target on the reals, mean of the 10 targets, first -> last 5 batches: 0.07 -> 0.18 after
    # 20 steps, 0.07 -> 0.29 after 100 (~22 s per target on one shared CPU thread); more steps
    # were not measured.
    max_steps: int = setting(100, range=_between(0, 1_000_000), commands=("caso",), order=100,
                             help="Optimisation steps per embedding.")
    batch_size: int = setting(2, range=_between(1, 4096))
    # latent reconstruction loss weight (the paper's lambda; the code's 0)
    recon_weight: float = setting(0.0, range=_between(0, _INF))
    guidance_scale: float = setting(10.0, range=_GUIDANCE)  # CFG scale of the one-step x0 prediction while learning
    # which embeddings edit which reals: "self" (each real towards its own class), "all" (each real
    # towards every class), "B" or "A->B" (every real / the reals of A towards B, labelled B);
    # "+" concatenates embeddings in one condition ("A->B+C", the multi-attribute edit)
    target: str = setting("self", commands=("caso",),
                          help="Which embeddings edit which reals: self (default), all, B, A->B (counterfactual, "
                               "label B); B+C concatenates embeddings in one condition.")
    # ddim: the paper's DDIM inversion + guided denoising; sdedit: noise + denoise
    edit_mode: str = setting("ddim", choices=("ddim", "sdedit"), commands=("caso",),
                             help="ddim: DDIM inversion then guided denoising (the paper's); sdedit: noise then denoise.")
    # editing: fraction of the schedule the real image is inverted / noised to
    strength: float = setting(0.5, range=_between(0, 1, lo_open=True), commands=("caso",),
                              help="Editing: fraction of the schedule the real image is inverted/noised to.")
    edit_steps: int = setting(50, range=_between(1, 10_000))  # the official code's NUM_DDIM_STEPS
    # negative values reverse the edit (the edit keeps the source's label)
    edit_guidance: float = setting(10.0, range=_between(-100, 100), commands=("caso",), order=99,
                                   help="Guidance scale of the edit (negative reverses it; the label stays the source's).")
    # guide one denoising step only (index among the steps that run)
    guided_step: int | None = setting(None, range=_between(0, 10_000), commands=("caso",),
                                      help="Guide this denoising step only (single-step edit; 0 = the first that runs).")
    # per condition; > 1 needs sdedit (a ddim edit is deterministic)
    edits_per_image: int = setting(1, range=_between(1, 10_000), commands=("caso",),
                                   help="Edits written per real image and condition (> 1 needs sdedit).")
    image_format: str = setting("png", choices=("jpg", "png", "webp"))


@dataclass
class Config:
    dataset: str = setting("digits", commands=CONFIG_COMMANDS,
                           help="Dataset name: digits, cub, inat, imagenet, folder (selects pipelines/<name>.yaml).")
    data_root: str | None = setting(None, commands=CONFIG_COMMANDS, cli_type="path",
                                    help="Folder holding the dataset's images.")
    dataset_options: dict[str, Any] = field(default_factory=dict)  # e.g. inat: {class_list: FILE}
    model: str = setting("embedded:tiny-digits", resume=_RUN_STAGES, commands=CONFIG_COMMANDS,
                         help="Diffusion backbone: embedded:<name>, a pipeline folder, or a hub id.")
    classifier: str | None = setting("embedded:digits-guide", resume=_RUN_STAGES, commands=CONFIG_COMMANDS,
                                     help="Guidance classifier: embedded:<name>, timm:<arch>[@ckpt], hf:<repo-or-folder>.")
    judge: str | None = "embedded:digits-judge"
    out: str | None = setting(None, commands=CONFIG_COMMANDS,  # None: runs/<dataset>
                              help="Run folder (default: runs/<dataset>).")
    seed: int = setting(0, range=_between(0, 2**63 - 1), resume=_RUN_STAGES, commands=CONFIG_COMMANDS,
                        help="Run seed; every sample's seed derives from it.")
    device: str = setting("auto", commands=CONFIG_COMMANDS, help="auto, cpu, cuda or cuda:N.")
    dtype: str = setting("auto", choices=("auto", "float32", "float16", "bfloat16"), commands=CONFIG_COMMANDS,
                         help="Compute dtype (CPU always uses float32).")
    workers: int = setting(2, range=_between(0, 100_000), commands=CONFIG_COMMANDS,
                           help="Ray actors to run (each asks for --gpus-per-worker GPUs when the device wants CUDA); "
                                "0 runs inline.")
    address: str | None = setting(None, commands=CONFIG_COMMANDS,
                                  help="Ray cluster address (default: $RAY_ADDRESS, else a Ray head running here, "
                                       "else a private local Ray).")
    # GPUs each Ray actor asks for when the device wants CUDA (0.5: two per GPU)
    gpus_per_worker: float = setting(
        1.0, range=(_gpus_fit, ""), commands=CONFIG_COMMANDS,
        error="gpus_per_worker must be a fraction of one GPU (0 < x <= 1) or a whole number, got {value!r}",
        help="GPUs each Ray actor asks for on --device cuda (or auto on a GPU cluster); 0.5 puts two on a GPU.")
    # seconds to wait for a Ray node that can take an actor, then one error
    placement_timeout: float = setting(
        300.0, range=(lambda t: t > 0, ""), commands=CONFIG_COMMANDS,
        error="placement_timeout must be a positive number of seconds, got {value!r}",
        help="Seconds to wait for Ray nodes that can take the actors before giving up (default 300).")
    # torch CPU threads per work unit, inline and on every actor: the same bytes whatever --workers
    threads: int = setting(1, range=_between(1, 1024), commands=_STAGES,
                           help="torch CPU threads per work unit, inline and on every Ray actor alike (default 1): "
                                "the same count gives the same bytes whatever --workers.")
    # torch's deterministic kernels on every worker (augment.models.device.deterministic_mode)
    deterministic: bool = setting(
        False, commands=("tokens", "generate", "caso", "build", "train", "benchmark", "config"), omit_default=True,
        help="Deterministic CUDA kernels on every worker (torch.use_deterministic_algorithms, "
             "CUBLAS_WORKSPACE_CONFIG, cuDNN): the same bytes on re-runs on one GPU model, somewhat slower; "
             "see docs/determinism.md.")
    # "3,8" or "0-9"; None = all
    classes: str | None = setting(None, resume=("generate", "caso"), commands=CONFIG_COMMANDS, order=9.5,
                                  help="Class selection: indices 3,8, ranges 0-9 or class names (default: all).")
    resolution: int | None = setting(None, range=_between(8, 16384), resume=("tokens", "generate"))  # None: native
    scheduler: str = setting("ddim", choices=SAMPLERS, resume=("tokens", "generate"))  # tokens train through the sampler too
    tokens: TokenConfig = field(default_factory=TokenConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    caso: CasoConfig = setting(default_factory=CasoConfig, resume=("caso",))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        omit_defaults(self, d)  # a top-level setting added later (deterministic) leaves old run.json bytes alone
        for name in _SECTIONS:
            omit_defaults(getattr(self, name), d[name])
        return d


def omit_defaults(obj: Any, d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (``obj``'s fields as a dict) without the settings declared ``omit_default`` that hold
    their default (:class:`Setting`)."""
    for f in fields(obj):
        meta = f.metadata.get("setting")
        if meta is not None and meta.omit_default and f.name in d and d[f.name] == f.default:
            del d[f.name]
    return d


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


#: the most text one YAML source (preset, --config file, --set value) may hold: a config is a few
#: KB; anything near this is a mistake (a data file passed as --config) or an attack
MAX_YAML_BYTES = 1_000_000
#: the most nodes a YAML document may hold once its aliases are expanded: YAML's anchors let a few
#: hundred bytes stand for billions of nodes (the "billion laughs"), which PyYAML shares by
#: reference but every later deep copy (``asdict``, JSON, ``yaml.dump``) expands
MAX_YAML_NODES = 100_000


def _expanded_size(node: yaml.Node, where: str) -> int:
    """How many nodes ``node`` stands for once every alias is expanded, counted on the composed
    graph (each node once, memoised) so a bomb is measured without being built; a node that
    contains itself (``&a [*a]``) is refused, as no setting can hold an infinite value."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    open_: set[int] = set()
    while stack:
        n, done = stack.pop()
        if done:
            open_.discard(id(n))
            children: list[yaml.Node] = []
            if isinstance(n, yaml.SequenceNode):
                children = n.value
            elif isinstance(n, yaml.MappingNode):
                children = [c for pair in n.value for c in pair]
            sizes[id(n)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(n)] > MAX_YAML_NODES:
                raise AugmentError(f"{where} expands to more than {MAX_YAML_NODES:,} values (YAML aliases?); "
                                   "write the settings out without anchors")
            continue
        if id(n) in sizes:
            continue
        if id(n) in open_:
            raise AugmentError(f"{where} holds a value that contains itself (a recursive YAML alias); "
                               "write the settings out without anchors")
        open_.add(id(n))
        stack.append((n, True))
        kids = n.value if isinstance(n, yaml.SequenceNode) else \
            [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else []
        stack.extend((c, False) for c in kids if id(c) not in sizes)
    return sizes[id(node)]


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with bounds: at most :data:`MAX_YAML_BYTES` of text and
    :data:`MAX_YAML_NODES` values once aliases are expanded, no self-containing value, no nesting
    deeper than Python's stack; each refusal is one AugmentError naming ``where``. The one way
    augment reads YAML it is given (presets, --config files, --set values)."""
    if len(text) > MAX_YAML_BYTES:
        raise AugmentError(f"{where} is {len(text):,} characters, more than a config holds "
                           f"(at most {MAX_YAML_BYTES:,}); check that it is the right file")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise AugmentError(f"cannot read {where}: {problem}{at}; fix the YAML syntax") from None
    except RecursionError:
        raise AugmentError(f"{where} nests deeper than a config can; flatten it") from None
    finally:
        loader.dispose()


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    data = load_yaml(text, where) or {}
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
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):  # --set tokens=2 --set tokens.lr=1
                section = ".".join(parents[: i + 1])
                raise AugmentError(f"{key} cannot be set: {section} was given a value ({node!r}), not a mapping; "
                                   f"drop the --set {section}=...")
        node[leaf] = value
    return nested


def resolve_config(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    dataset: str | None = None,
    run: str | os.PathLike[str] | None = None,
    recorded: tuple[dict[str, Any], Path] | None = None,
) -> Config:
    """Build the config: defaults < preset of the dataset < config file < run.json < overrides.

    ``overrides`` are the command-line flags, with dotted keys (``tokens.lr``); ``None`` values are
    ignored (flag not given). ``run``: a run folder whose settings apply (train, eval and benchmark
    read the run they evaluate); the result's ``out`` is then that folder. ``recorded``: the
    settings its run.json records and that file's path (:func:`augment.io.rundir.run_settings`;
    the caller reads them, the config layer reads no run folder).
    """
    file_data = _read_yaml(Path(config_file), "config file") if config_file else {}
    flags = _nest(overrides or {})
    settings, recorded_at = recorded if recorded else ({}, None)
    ds = flags.get("dataset") or settings.get("dataset") or dataset or file_data.get("dataset") or Config.dataset
    cfg = Config()
    _merge(cfg, _parse_yaml(read_preset(ds), f"preset {ds}.yaml"), f"preset {ds}.yaml")
    if file_data:
        _merge(cfg, file_data, f"config file {config_file}")
    if settings:
        _merge(cfg, settings, str(recorded_at))
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


#: the placeholders a prompt template may use, and the ones each list's templates must contain
_PLACEHOLDERS = ("token", "name")
# ``{name}`` is optional: without it the token stands for the class, and the plain-prompt arm puts
# the class name in the token's place (augment.prompts.render_prompt)


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


def _sections(cfg: Any) -> list[tuple[str, Any]]:
    """``[("", cfg), ("tokens.", cfg.tokens), ...]``: the config and its sections, with their key prefixes."""
    return [("", cfg)] + [(f"{name}.", getattr(cfg, name)) for name in _SECTIONS]


def settings_of(cls: type = Config) -> list[tuple[str, Setting]]:
    """Every declared setting of ``cls`` and its sections: ``(dotted key, Setting)`` in declaration
    order (the config's own fields first)."""
    out: list[tuple[str, Setting]] = []
    for prefix, section in [("", cls)] + ([(f"{n}.", c) for n, c in _SECTIONS.items()] if cls is Config else []):
        out += [(prefix + f.name, f.metadata["setting"]) for f in fields(section) if "setting" in f.metadata]
    return out


def check_section(obj: Any, prefix: str = "") -> None:
    """Check every declared setting of one dataclass (the config itself or a section) against its
    declaration (:meth:`Setting.check`)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        meta = f.metadata.get("setting")
        if not is_dataclass(value) and not _finite(value):
            name = meta.key_name(prefix + f.name) if meta is not None else prefix + f.name
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise AugmentError(f"{name} must be a finite number (no NaN or infinity), got {shown}")
        if meta is not None:
            meta.check(prefix + f.name, value)


def check_value(key: str, value: Any) -> None:
    """Check one value of a setting against its declaration, where a library call takes it as an
    argument (the mixing of synthetic images): the same test and message as the config's."""
    dict(settings_of())[key].check(key, value)


def validate(cfg: Config) -> None:
    """Refuse values no stage can use, naming the key (and its flag), the value and the valid range.

    The one validation of every section: types were checked as the layers merged (:func:`_merge`);
    this checks what each field declares (ranges, choices, prompt templates), before any model
    loads or any folder is made."""
    cfg.tokens.grad_steps = parse_grad_steps(cfg.tokens.grad_steps)
    for prefix, obj in _sections(cfg):
        check_section(obj, prefix)


def compat_keys(stage: str, after: dict[str, list[str]] | None = None, tail: tuple[str, ...] = ()) -> list[str]:
    """The keys whose change blocks ``stage``'s resume (its ``COMPAT_KEYS``): the settings declared
    with ``resume=(stage, ...)``, in declaration order, with the stage's own extras (not config
    keys: ``model_fingerprint``, ``class_names``) placed ``after`` the key they follow, and ``tail``."""
    keys: list[str] = []
    for key, s in settings_of():
        if stage in s.resume:
            keys += [key, *(after or {}).get(key, [])]
    return keys + list(tail)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``run.json``'s ``config`` entry (for stages that read a run folder)."""
    cfg = Config()
    _merge(cfg, data, "run.json")
    return cfg


def replace(cfg: Config, **changes: Any) -> Config:
    return dataclasses.replace(cfg, **changes)
