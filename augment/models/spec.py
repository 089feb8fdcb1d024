"""Model specs read once: the text of ``--model`` / ``--classifier`` / ``--judge`` -> a :class:`ModelSpec`.

Each scheme is declared once in :data:`SCHEMES` (its prefix, the kinds of model it names, how the
error messages spell it, whether it takes ``@<checkpoint>``, whether augment can load it yet), in
the spirit of timm's one prefix parser. The loaders (:mod:`augment.models.backbone`,
:mod:`augment.models.classifier`) and ``augment models show`` read specs only through
:func:`parse_spec` / :func:`split_prefix`, so adding a scheme is one table entry plus its loader.

A spec's text is kept verbatim (:attr:`ModelSpec.text`): it is what run.json and the manifests
record and what error messages quote, so ``hf:owner/name`` and ``owner/name`` stay two specs even
though both resolve to the same hub snapshot.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from augment.errors import AugmentError

Kind = Literal["backbone", "classifier"]

#: a hub id, ``owner/name`` (a bare backbone spec that is not a local path)
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Scheme:
    """One way of naming a model. ``prefix`` is None for the bare forms (a path, a hub id)."""

    name: str
    prefix: str | None
    kinds: tuple[Kind, ...]
    #: how the "use ..." list of a bad-spec error spells it, per kind; a kind without an entry is
    #: not listed there (``hf:`` for backbones is the same as a bare hub id)
    hint: dict[Kind, str]
    checkpoint: bool = False  #: takes ``@<checkpoint>`` after its name
    supported: bool = True  #: False: parsed, and refused by the loaders with :func:`require_supported`


SCHEMES: tuple[Scheme, ...] = (
    Scheme("embedded", "embedded:", ("backbone", "classifier"),
           {"backbone": "embedded:<name>", "classifier": "embedded:<name>"}),
    Scheme("timm", "timm:", ("classifier",), {"classifier": "timm:<arch>[@checkpoint]"}, checkpoint=True),
    Scheme("hf", "hf:", ("backbone", "classifier"), {"classifier": "hf:<repo-or-folder>"}),
    Scheme("clip", "clip:", ("classifier",), {"classifier": "clip:<folder-or-hub-id>"}),
    Scheme("path", None, ("backbone",), {"backbone": "a local pipeline folder"}),
    Scheme("hub", None, ("backbone",), {"backbone": "a hub id like stabilityai/stable-diffusion-2-1-base"}),
)
BY_NAME = {s.name: s for s in SCHEMES}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``scheme`` (a :data:`SCHEMES` name), ``name`` (the embedded name, timm
    architecture, hub id or folder, path), ``checkpoint`` (the part after ``@``, where the scheme
    takes one) and the verbatim ``text``."""

    text: str
    kind: Kind
    scheme: str
    name: str
    checkpoint: str | None = None

    def __str__(self) -> str:
        return self.text


def split_prefix(text: str) -> tuple[str | None, str]:
    """``(scheme, rest)`` for a prefixed spec (``embedded:x`` -> ``("embedded", "x")``), else ``(None, text)``."""
    for scheme in SCHEMES:
        if scheme.prefix and text.startswith(scheme.prefix):
            return scheme.name, text[len(scheme.prefix):]
    return None, text


def spec_forms(kind: Kind) -> str:
    """The spec forms of ``kind`` that bad-spec errors list: ``a, b, or c``."""
    hints = [s.hint[kind] for s in SCHEMES if kind in s.hint and s.supported]
    return ", ".join(hints[:-1]) + ", or " + hints[-1] if len(hints) > 1 else "".join(hints)


def _what(kind: Kind) -> str:
    """How messages name a spec of ``kind`` (the backbone's flag is --model)."""
    return "model" if kind == "backbone" else "classifier"


def _unreadable(text: str, kind: Kind) -> AugmentError:
    return AugmentError(f"cannot read {_what(kind)} spec {text!r}: use {spec_forms(kind)}")


def parse_spec(text: str | None, kind: Kind) -> ModelSpec:
    """Read ``text`` as a ``kind`` spec, or raise the one-line error that lists the forms of ``kind``.

    Prefixes first (``embedded:``, ``timm:``, ``hf:``, ``clip:``, each for the kinds it names); a
    backbone may also be a local folder (checked on this machine's disk, so an existing folder
    named like ``owner/name`` is a folder) or a hub id. No classifier given (None or empty) is
    its own error, naming the flag.
    """
    if kind == "classifier" and not text:
        raise AugmentError(
            "no classifier given: pass --classifier timm:<arch>@<checkpoint>, hf:<folder> or embedded:<name> "
            "(a classifier trained on this dataset's classes)"
        )
    text = str(text)
    scheme, rest = split_prefix(text)
    if scheme is not None and kind in BY_NAME[scheme].kinds:
        checkpoint = None
        if BY_NAME[scheme].checkpoint:
            rest, _, at = rest.partition("@")
            checkpoint = at or None
        return ModelSpec(text, kind, scheme, rest, checkpoint)
    if kind == "backbone":
        if Path(text).expanduser().exists():
            return ModelSpec(text, kind, "path", text)
        if looks_like_path(text):  # meant as a folder (/abs, ./rel, ~/x): say so, not "cannot read"
            raise AugmentError(
                f"model folder {text} does not exist; check the path (a diffusers pipeline folder saved with "
                "save_pretrained), or pass a hub id like stabilityai/stable-diffusion-2-1-base"
            )
        if HUB_ID.match(text):
            return ModelSpec(text, kind, "hub", text)
    raise _unreadable(text, kind)


def require_supported(spec: ModelSpec) -> ModelSpec:
    """``spec`` when augment can load its scheme; else one line naming the forms it can load."""
    if not BY_NAME[spec.scheme].supported:
        raise AugmentError(
            f"{_what(spec.kind)} spec {spec.text!r}: {BY_NAME[spec.scheme].prefix} {_what(spec.kind)}s are not "
            f"supported yet; use {spec_forms(spec.kind)}"
        )
    return spec


def looks_like_path(text: str) -> bool:
    """Whether a backbone spec that does not resolve was meant as a folder (not a hub id): what a
    worker node that lacks it says it lacks."""
    return text.startswith(("/", ".", "~")) or (os.sep in text and not HUB_ID.match(text))
