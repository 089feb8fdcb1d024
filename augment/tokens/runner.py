"""The ``augment tokens`` stage: one DisCo token per selected class, in parallel, resumable.

Work unit = one class. A class is done when its token file (``ArmDir.token_file``) exists
(written atomically by the driver, then its row in ``tokens.parquet``) and its row lists that
file with its sha256; a re-run skips done classes and redoes the rest, ``force`` retrains all
selected classes. The checks, the run folder and the failure policy are :mod:`augment.stage`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from augment import stage
from augment.config import Config, compat_keys, config_from_dict, parse_grad_steps
from augment.distributed import Pool, WorkerFactory
from augment.inputs import RunInputs, resolve_inputs
from augment.io.atomic import atomic_write_json, remove_temp_files, sha256_file
from augment.io.jsonsafe import json_safe
from augment.io.rundir import ArmDir
from augment.io.tokens_table import TokenRow, read_token_rows, write_token_rows
from augment.models.cache import ModelCache
from augment.models.classifier import ClassifierSource
from augment.models.device import describe_device
from augment.shipping import Payload
from augment.tokens.disco import TokenResult, check_initialisers
from augment.tokens.textual_inversion import check_names_hold_no_token, save_token, token_string

# Settings that make a token different: a folder with other values belongs to another run.
# (declared on the config's fields, resume=("tokens", ...); the extras are not config keys)
# ``sampler``: the generation settings validation scores every candidate with (and training uses
# while tokens.steps / tokens.guidance_scale are unset), so they choose the kept vector too.
COMPAT_KEYS = compat_keys("tokens", after={"model": ["model_fingerprint"], "seed": ["class_names"]},
                          tail=("sampler",))


class TokenWorker:
    """Loads backbone + classifier through its host's ``cache`` (once per host, :mod:`augment.models.cache`;
    fresh without one); ``run(class_index)`` trains that class's token.

    The classifier is built from the driver's :class:`ClassifierSource` (a checkpoint's bytes), not
    from a path: the worker's node need not see the driver's disk."""

    def __init__(self, cfg_dict: dict[str, Any], class_names: list[str], classifier: ClassifierSource | str,
                 cache: ModelCache | None = None) -> None:
        from augment.models.backbone import native_resolution
        from augment.models.classifier import check_classes
        from augment.models.memory import preflight
        from augment.tokens.disco import DiscoTrainer

        cfg = config_from_dict(cfg_dict)
        self.class_names = class_names
        preflight(cfg, stage="tokens")  # a token step that cannot fit this CUDA card: one line, before any load
        # loaded once per worker host: the generate stages of the same build reuse them
        cache = cache if cache is not None else ModelCache()
        pipe = cache.backbone(cfg.model, cfg.device, cfg.dtype, cfg.scheduler)
        clf = cache.classifier(classifier, pipe.unet.device)
        check_classes(clf, class_names)
        self.device_info = describe_device(pipe.unet.device, pipe.unet.dtype)  # resolved on this node, recorded
        self.trainer = DiscoTrainer(pipe, clf, cfg.tokens, cfg.seed, cfg.resolution or native_resolution(pipe),
                                    generation=cfg.generate, class_names=class_names)

    def run(self, class_index: int) -> TokenResult:
        """The trainer's result as is: a failed training comes back with ``status`` failed, not raised."""
        return self.trainer.train(class_index, self.class_names[class_index])


def make_worker(cfg_dict: dict[str, Any], class_names: list[str], classifier: Payload[ClassifierSource],
                cache: ModelCache | None = None) -> TokenWorker:
    """The factory a worker host calls with its model cache: the classifier arrives by reference, fetched here."""
    return TokenWorker(cfg_dict, class_names, classifier.get(), cache)


@dataclass
class TokensSummary(stage.StageSummary):
    """``rows``: every row of tokens.parquet after the run (also classes not selected this time)."""

    rows: list[TokenRow]

    @property
    def trained(self) -> int:
        return self.done


class TokensStage(stage.Stage[int, TokenResult, TokensSummary]):
    """Units are class indices; results are the trainer's :class:`TokenResult`."""

    name = "tokens"
    compat_keys = COMPAT_KEYS

    def __init__(self, cfg: Config, inputs: RunInputs | None = None) -> None:
        super().__init__(cfg)
        self.inputs = inputs or resolve_inputs(cfg)
        self.names: list[str] = []
        self.classes: list[int] = []
        self.fingerprint: str | None = None
        self.rows: dict[int, TokenRow] = {}
        self.classifier: Payload[ClassifierSource] | None = None

    @property
    def arm(self) -> ArmDir:
        return self.run.arm_dir("token")

    def preflight(self) -> None:
        inputs = self.inputs  # the run's set-up, resolved once for all its stages (augment.inputs)
        inputs.check()  # model, classifier, classes: every problem at once, before any model loads
        self.names = inputs.class_names
        check_names_hold_no_token(self.names)
        self.classes = inputs.classes
        # fail on the driver, with one clear line, before any actor starts loading models
        check_initialisers(inputs.backbone, self.names, self.classes, self.cfg.tokens)  # the tokenizer alone
        parse_grad_steps(self.cfg.tokens.grad_steps)
        self.classifier = inputs.classifier
        self.fingerprint = inputs.fingerprint

    def run_json_extra(self) -> dict[str, Any]:
        g = self.cfg.generate
        return {"class_names": self.names, "model_fingerprint": self.fingerprint,
                "sampler": {"steps": g.steps, "guidance_scale": g.guidance_scale, "negative_prompt": g.negative_prompt}}

    def token_file(self, c: int) -> Path:
        return self.arm.token_file(c, self.names[c])

    def plan(self, force: bool) -> stage.Plan[int]:
        self.arm.tokens.mkdir(parents=True, exist_ok=True)
        remove_temp_files(self.arm.tokens)  # a write a kill interrupted (verify would report it for good)
        self.rows = read_token_rows(self.arm.tokens_parquet)
        todo = [c for c in self.classes if force or not self._done(c)]
        return stage.Plan(todo, skipped=len(self.classes) - len(todo), total=len(self.classes))

    def _done(self, c: int) -> bool:
        """A class is done when its token file exists and tokens.parquet lists exactly that file.

        The file is renamed into place before its row is written; a kill between the two leaves a
        file without its row (or, under ``--force``, beside the previous token's row), which verify
        rejects. Such a class is trained again, which rewrites the pair."""
        path, row = self.token_file(c), self.rows.get(c)
        return (path.exists() and row is not None and row.status == "ok" and row.token_file == path.name
                and row.token_sha256 == sha256_file(path))

    def worker_factory(self) -> WorkerFactory:
        return partial(make_worker, self.cfg_dict, self.names, self.classifier)

    def _record(self, row: TokenRow) -> None:
        self.rows[row.class_index] = row
        write_token_rows(self.arm.tokens_parquet, self.rows)

    def _base_row(self, c: int) -> TokenRow:
        t = self.cfg.tokens
        return TokenRow(class_index=c, class_name=self.names[c], token=token_string(c), grad_steps=str(t.grad_steps),
                        lr=t.lr, model_id=self.cfg.model, n_vectors=t.n_vectors)

    def on_result(self, c: int, res: TokenResult) -> str | None:
        row = replace(self._base_row(c), init_token=res.init_token, steps=res.steps,
                      best_loss=res.best_loss if math.isfinite(res.best_loss) else None,
                      final_accuracy=res.final_accuracy, seconds=res.seconds, status=res.status, error=res.error,
                      seeds=res.seeds, init_val_accuracy=res.init_val_accuracy,
                      final_val_accuracy=res.final_val_accuracy, negative_prompt=res.negative_prompt or None)
        # the history first: the token file is the class's done marker
        atomic_write_json(self.arm.token_history(c, self.names[c]), json_safe(res.history_json()))  # a failed class's NaN loss
        if res.status == "ok":
            path = self.token_file(c)
            row.token_sha256 = save_token(path, res.token, res.embedding)
            row.token_file = path.name
        self._record(row)
        return None if res.status == "ok" else res.error

    def on_failed(self, c: int, error: str) -> None:
        self._record(replace(self._base_row(c), status="failed", error=error))

    def unit_label(self, c: int) -> str:
        return f"{c} {self.names[c]}"

    def write_label(self, c: int) -> str:
        return f"the token of class {c} ({self.names[c]})"

    def progress_postfix(self, c: int, res: TokenResult) -> dict[str, Any]:
        return {"cls": c, "loss": f"{res.best_loss:.3f}", "val": f"{_pct(res.init_val_accuracy)}->{_pct(res.final_val_accuracy)}"}

    def summary(self, **common: Any) -> TokensSummary:
        return TokensSummary(**common, rows=[self.rows[k] for k in sorted(self.rows)])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_tokens(cfg: Config, force: bool = False, show_progress: bool = True, pool: Pool | None = None,
               inputs: RunInputs | None = None) -> TokensSummary:
    """Train the tokens of the selected classes into the run folder's ``tokens/`` (on ``pool``,
    the one ``augment build`` shares between its stages, else on a pool of its own; ``inputs``:
    the run's set-up when another stage resolved it already)."""
    return stage.run_stage(TokensStage(cfg, inputs), force, show_progress, pool)
