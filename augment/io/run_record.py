"""``run.json`` as a typed record: what made a run folder (see :mod:`augment.io.rundir`, which
reads and writes it).

:class:`RunRecord` has the entries every writer records (the config, the stage and when each stage
wrote, the settings each stage wrote with, versions, the model and classifier ids, the class
names); the entries a stage adds of its own (``baseline``, ``model_fingerprint``, or any other)
are kept in ``extra`` with a typed property for the known ones. :meth:`RunRecord.from_json` reads
every run.json the code has written (an older one may lack ``settings``, ``stages`` or
``class_names``), and :meth:`RunRecord.to_json` gives back the same object, so a record read and
written again is the same file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["RECORD_FIELDS", "RunRecord"]

#: entries whose value must be a JSON object; one that is not is read as absent (readers ignored it)
_OBJECTS = ("config", "stages", "settings", "packages")


@dataclass
class RunRecord:
    """One run.json (one arm's). ``config``: the last writer's resolved config; ``stage``: the last
    stage that wrote; ``stages``: stage -> its last write time; ``settings``: stage -> the
    ``config`` and extras that stage last wrote with (what its resume compares against);
    ``created``/``updated``: ISO-8601 UTC; ``git_sha``: None outside a checkout; ``packages``:
    package -> version; ``model_id``/``classifier_id``: from the config unless a stage gave them;
    ``class_names``: the run's classes; ``extra``: the stages' other top-level entries."""

    config: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    stages: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    updated: str | None = None
    augment_version: str | None = None
    git_sha: str | None = None
    packages: dict[str, str | None] = field(default_factory=dict)
    model_id: str | None = None
    classifier_id: str | None = None
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the entries above that the file read did not have (an older run.json); to_json leaves them out
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def baseline(self) -> bool | None:
        """Whether the generate stage wrote this arm without tokens (None: not a generate arm)."""
        return self.extra.get("baseline")

    @property
    def model_fingerprint(self) -> str | None:
        """What identifies the diffusion weights (:func:`augment.models.backbone.model_fingerprint`)."""
        return self.extra.get("model_fingerprint")

    @property
    def devices(self) -> list[dict[str, Any]] | None:
        """What the last writing stage's workers computed on (device, dtype, GPU name, memory,
        driver, CUDA: :class:`augment.models.device.DeviceInfo` as JSON), one entry per distinct
        device; None before devices were recorded. A record only: resume never compares it."""
        return self.extra.get("devices")

    def has(self, name: str) -> bool:
        """Whether the record holds entry ``name`` (a field the file had, or a stage's extra)."""
        return name in self.extra or (name in RECORD_FIELDS and name not in self.absent)

    def stage_settings(self, stage: str) -> dict[str, Any] | None:
        """What ``stage`` recorded it wrote with (``config`` and its extras); None when it did not
        (a folder from before settings were recorded, or another stage's)."""
        recorded = self.settings.get(stage)
        return recorded if isinstance(recorded, dict) else None

    def to_json(self) -> dict[str, Any]:
        """The run.json object (the writer sorts its keys)."""
        out = {name: getattr(self, name) for name in RECORD_FIELDS if name not in self.absent}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """A record from a parsed run.json; entries it lacks are ``absent``, ones it does not know go
        to ``extra``."""
        known = {k: v for k, v in data.items() if k in RECORD_FIELDS}
        absent = {name for name in RECORD_FIELDS if name not in known}
        for name in _OBJECTS:
            if name in known and not isinstance(known[name], dict):
                del known[name]
                absent.add(name)
        extra = {k: v for k, v in data.items() if k not in RECORD_FIELDS}
        return cls(**known, extra=extra, absent=frozenset(absent))


#: the entries every writer records (RunRecord's fields but ``extra`` and ``absent``)
RECORD_FIELDS = tuple(f.name for f in fields(RunRecord) if f.name not in ("extra", "absent"))
