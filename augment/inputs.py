"""What the writing stages of one run resolve from its config: resolved once, shared by them all.

The tokens, generate and caso stages each need the same set-up before any work: the dataset, the
selected classes and their names, the diffusion backbone's spec (checked on the driver, and its
fingerprint), and the guidance classifier's source (its files read once on the driver, since
workers may not see this disk), loaded once to check that it has one output per class.
:class:`RunInputs` holds them for one run; :mod:`augment.pipeline` builds it once and passes it to
every stage it chains, so ``augment build`` reads the dataset and loads the classifier once on the
driver, not once per stage. A stage run alone builds its own.

Each piece is resolved on first use, in the order a stage's preflight asks for it: a stage's own
cheap checks (a bad ``--classes``, a bad target) still come before any model is loaded, and
nothing is resolved before the stage skeleton's own preflight (``augment.stage``) ran. A stage's
preflight starts with :meth:`RunInputs.check`: the cheap checks of every piece (the dataset and
``--classes``, the model spec and folder, the classifier spec and files, its output count as its
files declare it), all problems reported at once, one line each, so that a user with a wrong model,
classifier and class list fixes them in one go instead of over three runs.

This module sits above the stages (they import it) and below :mod:`augment.pipeline`.
"""

from __future__ import annotations

from functools import cached_property

from augment.config import Config
from augment.datasets.base import Dataset
from augment.datasets.selection import dataset_of, needs_classifier_names, select_classes
from augment.errors import AugmentError, raise_all
from augment.models.classifier import Classifier, ClassifierSource
from augment.shipping import Payload

__all__ = ["RunInputs", "resolve_inputs"]


class RunInputs:
    """The set-up every writing stage of one run shares, each piece resolved once (see the module doc).

    Valid for configs with the same dataset, classes, model and classifier as ``cfg`` (the other
    sections, e.g. a benchmark draw's ``caso``, may differ)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._checked = False

    def check(self) -> None:
        """Every cheap check of the inputs, all problems at once (see the module doc); no model loads.

        Once per run: the stages ``augment build`` chains share one :class:`RunInputs`. The class
        count is checked here only where the classifier's files declare it
        (:func:`~augment.models.classifier.declared_outputs`); otherwise :attr:`classifier` checks
        it when it loads the model."""
        if self._checked:
            return
        from augment.models.classifier import check_class_count, declared_outputs

        problems: list[AugmentError] = []

        def attempt(get):  # the value, or None with the problem noted
            try:
                return get()
            except AugmentError as e:
                problems.append(e)
                return None

        names = None
        try:
            self.__dict__["dataset"] = dataset_of(self.cfg)  # primes the cached property
            names = self.class_names
        except AugmentError as e:
            if not needs_classifier_names(self.cfg):  # else the names come from the classifier, later
                problems.append(e)
        if names is not None:
            attempt(lambda: self.classes)
        attempt(lambda: self.backbone)
        source = attempt(lambda: self._source)
        if source is not None and names is not None:
            n = declared_outputs(source)
            if n is not None:
                attempt(lambda: check_class_count(source.spec, n, names))
        raise_all(problems)
        self._checked = True

    @cached_property
    def _source(self) -> ClassifierSource:
        from augment.models.classifier import read_classifier_source

        # read once here: workers may not see this disk; a clip: guide carries the names it scores
        names = self.dataset.class_names if _scores_names(self.cfg.classifier) else None
        return read_classifier_source(self.cfg.classifier, names)

    @cached_property
    def _loaded(self) -> Classifier:
        from augment.models.classifier import load_classifier

        return load_classifier(self._source)

    @cached_property
    def dataset(self) -> Dataset:
        """The config's dataset; with no data root, names only, from the classifier's label map."""
        try:
            return dataset_of(self.cfg)
        except AugmentError:
            if not needs_classifier_names(self.cfg) or _scores_names(self.cfg.classifier):
                raise  # a clip: guide has no names of its own: it scores the dataset's
            return dataset_of(self.cfg, self._loaded.class_names)  # the classifier loaded once, for both

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    @cached_property
    def classes(self) -> list[int]:
        """``--classes`` as sorted indices into :attr:`class_names`."""
        return select_classes(self.cfg.classes, len(self.class_names), self.class_names)

    @cached_property
    def backbone(self) -> str:
        """The backbone's resolved path or id; one line naming the fix when the spec is wrong."""
        from augment.models.backbone import resolve_backbone_path

        return str(resolve_backbone_path(self.cfg.model))

    @cached_property
    def fingerprint(self) -> str:
        """The backbone's fingerprint (``run.json``'s ``model_fingerprint``)."""
        from augment.models.backbone import model_fingerprint

        return model_fingerprint(self.cfg.model)

    @cached_property
    def classifier(self) -> Payload[ClassifierSource]:
        """The classifier's source, checked to have one output per class, for the workers (by reference)."""
        from augment.models.classifier import check_classes

        check_classes(self._loaded, self.class_names)
        return Payload(self._source)


def _scores_names(spec: str | None) -> bool:
    """Whether ``spec`` is a zero-shot guide that scores the dataset's class names (``clip:``)."""
    from augment.models.spec import split_prefix

    return bool(spec) and split_prefix(str(spec))[0] == "clip"


def resolve_inputs(cfg: Config) -> RunInputs:
    """The inputs of the run ``cfg`` describes; build it once per run and pass it to every stage."""
    return RunInputs(cfg)
