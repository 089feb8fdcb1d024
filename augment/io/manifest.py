"""Parquet manifests: one row per synthetic sample (``manifests/*.parquet``) and one per class token.

The schemas below are the contract with downstream tools (pyarrow, pandas, duckdb, training
filters). Each column carries a description in its field metadata; ``manifests/schema/*.json``
(human-readable column lists) are generated from these schemas by :func:`write_schema_docs`
(``python -m augment.io.manifest``) and a test checks that they match, so they never drift.

Columns marked ``nullable=False`` must be filled; :func:`write_parquet` refuses rows that leave
them empty or that name a column the schema does not have (a typo must not silently drop data).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from augment.errors import AugmentError
from augment.io.atomic import atomic_path, atomic_write_text, is_temp_name
from augment.io.rundir import ArmDir
from augment.resources import manifests_dir

__all__ = [
    "ADDED_COLUMNS",
    "MANIFEST_SCHEMA",
    "ManifestRow",
    "SCHEMA_DOCS",
    "TOKENS_SCHEMA",
    "read_manifest",
    "read_manifests",
    "schema_doc",
    "write_parquet",
    "write_schema_docs",
]

#: the schema documents, shipped with the package (augment.manifests); in a source checkout this is
#: the repository's top-level ``manifests/schema`` folder
SCHEMA_DIR = Path(str(manifests_dir() / "schema"))


def _field(name: str, type_: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"description": description})


MANIFEST_SCHEMA: pa.Schema = pa.schema(
    [
        _field(
            "key",
            pa.string(),
            "WebDataset sample key (no dots), e.g. c0042_s000017; the tar "
            "members are <key>.<image_format>, <key>.cls, <key>.json",
            nullable=False,
        ),
        _field(
            "shard",
            pa.string(),
            "shard basename without extension, e.g. synth-000000 "
            "(shards/<shard>.tar, manifests/<shard>.parquet)",
            nullable=False,
        ),
        _field(
            "sample_index",
            pa.int32(),
            "index of the sample within its class (0, 1, ...); "
            "with the run seed and class_index it determines the seed",
            nullable=False,
        ),
        _field("class_index", pa.int32(), "class index, the label stored in <key>.cls", nullable=False),
        _field("class_name", pa.string(), "human-readable class name", nullable=False),
        _field("prompt", pa.string(), "text prompt the image was generated from (with the token)"),
        _field("negative_prompt", pa.string(), "negative prompt (empty string if none)"),
        _field("seed", pa.int64(), "random seed of this sample's initial noise", nullable=False),
        _field("token", pa.string(), "the learned class token string used in the prompt, e.g. <c0042>"),
        _field("token_sha256", pa.string(), "sha256 (hex) of the token's .safetensors file"),
        _field("mode", pa.string(), "generation mode: txt2img or edit", nullable=False),
        _field("source_key", pa.string(), "edit mode: key of the real source image; null for txt2img"),
        _field(
            "strength",
            pa.float32(),
            "edit mode: noising strength (fraction of the schedule); null for txt2img",
        ),
        _field("edit_mode", pa.string(), "edit mode: ddim (DDIM inversion, then guided denoising) or sdedit "
                                         "(noise, then denoise); null for txt2img"),
        _field("targets", pa.string(), "edit mode: the classes whose CASO embeddings form the condition, "
                                       "joined by '+' (the first is the label unless the guidance is negative)"),
        _field("model_id", pa.string(), "diffusion backbone id (hub id, local dir or embedded:name)"),
        _field("scheduler", pa.string(), "sampler/scheduler name, e.g. ddim"),
        _field("steps", pa.int16(), "number of denoising steps"),
        _field("guidance_scale", pa.float32(), "classifier-free guidance scale"),
        _field("width", pa.int32(), "image width in pixels (read from the encoded image)", nullable=False),
        _field("height", pa.int32(), "image height in pixels (read from the encoded image)", nullable=False),
        _field(
            "image_format", pa.string(), "image file extension in the shard: jpg, png or webp", nullable=False
        ),
        _field("image_sha256", pa.string(), "sha256 (hex) of the encoded image bytes", nullable=False),
        _field("bytes", pa.int64(), "size of the encoded image in bytes", nullable=False),
        _field(
            "guide_confidence",
            pa.float32(),
            "the guidance classifier's probability of the target class for this image",
        ),
        _field("guide_pred", pa.int32(), "the guidance classifier's predicted class index"),
        _field(
            "soft_classes",
            pa.list_(pa.int32()),
            "soft label: the guidance classifier's top-k class indices (generate.soft_labels = k; all "
            "classes when k >= their number), most probable first, ties by index; null when k = 0",
        ),
        _field(
            "soft_probs",
            pa.list_(pa.float32()),
            "soft label: the guide's softmax probability of each soft_classes entry, rounded to 6 "
            "decimals (not renormalised: the rest of the mass is on the other classes)",
        ),
        _field(
            "attempts",
            pa.int16(),
            "draws of the class's attempt stream this sample took under --min-confidence (the rejected "
            "ones since the class's previous kept sample, plus itself); 1 without rejection",
        ),
        _field(
            "status",
            pa.string(),
            "ok, or a word the generate stage sets for kept-but-flagged samples "
            "(low_confidence: written by versions that kept a sample whose attempts all missed --min-confidence)",
            nullable=False,
        ),
        _field(
            "created_at", pa.timestamp("us", tz="UTC"), "when the shard was written (UTC)", nullable=False
        ),
        _field("tool_version", pa.string(), "augment version that wrote the sample", nullable=False),
    ],
    metadata={"description": "one row per synthetic sample; one Parquet file per shard"},
)

TOKENS_SCHEMA: pa.Schema = pa.schema(
    [
        _field("class_index", pa.int32(), "class index", nullable=False),
        _field("class_name", pa.string(), "human-readable class name", nullable=False),
        _field("token", pa.string(), "the token string added to the tokenizer, e.g. <c0042>", nullable=False),
        _field("init_token", pa.string(), "the existing token whose embedding initialised the new one"),
        _field(
            "token_file",
            pa.string(),
            "file name of the embedding inside tokens/, e.g. "
            "0042-red_fox.safetensors (diffusers textual-inversion format, one key = token)",
        ),
        _field("token_sha256", pa.string(), "sha256 (hex) of token_file"),
        _field("steps", pa.int32(), "optimisation steps run"),
        _field("best_loss", pa.float32(), "lowest training loss reached (the saved embedding's)"),
        _field(
            "final_accuracy", pa.float32(), "the guidance classifier's accuracy on the last training batch"
        ),
        _field("seconds", pa.float32(), "wall-clock seconds spent training this token"),
        _field("status", pa.string(), "ok or failed", nullable=False),
        _field("error", pa.string(), "error message when status is failed, else null"),
        _field(
            "grad_steps", pa.string(), "denoising steps the gradient flowed through (an integer or 'all')"
        ),
        _field("lr", pa.float32(), "learning rate"),
        _field("seeds", pa.list_(pa.int64()), "noise seeds used during training"),
        _field("model_id", pa.string(), "diffusion backbone id the token was trained for"),
        _field("init_val_accuracy", pa.float32(),
               "the guide's accuracy on the validation images of the initialiser (generation settings)"),
        _field("final_val_accuracy", pa.float32(),
               "the guide's accuracy on the validation images of the kept embedding (never below init_val_accuracy)"),
        _field("n_vectors", pa.int32(), "vectors in the token file ([n, D]); null in files written before it existed"),
        _field("negative_prompt", pa.string(),
               "negative prompt the token was trained with and is generated with (null: generate.negative_prompt)"),
    ],
    metadata={"description": "one row per class token; tokens/tokens.parquet"},
)

#: manifest columns added after the first release: manifests written before lack them, and readers
#: (read_manifests, verify, the mixing loader) treat them as null there
ADDED_COLUMNS = frozenset({"soft_classes", "soft_probs"})

SCHEMA_DOCS: dict[str, pa.Schema] = {"manifest": MANIFEST_SCHEMA, "tokens": TOKENS_SCHEMA}


# ------------------------------------------------------------------------------------- the record


@dataclass(kw_only=True)
class ManifestRow:
    """One manifest row (one synthetic sample), exactly the columns of :data:`MANIFEST_SCHEMA`, in
    its order (a test holds the two together; see the schema for what each column means).

    The stages build one per sample with what they know (``class_name``, ``seed``, ``mode``, the
    prompt and the guide's verdict ...); :func:`augment.io.shards.write_shard` fills the file facts
    (``key``, ``shard``, ``class_index``, ``image_format``, ``width``, ``height``,
    ``image_sha256``, ``bytes``, and ``created_at``, ``tool_version``, ``sample_index`` when left
    None) and writes the Parquet row and the ``<key>.json`` sidecar from the result. Values are
    stored as given (no conversion), so the files' bytes are what the stages' dicts once gave.
    """

    key: str | None = None
    shard: str | None = None
    sample_index: int | None = None
    class_index: int | None = None
    class_name: str
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int
    token: str | None = None
    token_sha256: str | None = None
    mode: str
    source_key: str | None = None
    strength: float | None = None
    edit_mode: str | None = None
    targets: str | None = None
    model_id: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    image_format: str | None = None
    image_sha256: str | None = None
    bytes: int | None = None
    guide_confidence: float | None = None
    guide_pred: int | None = None
    soft_classes: list[int] | None = None
    soft_probs: list[float] | None = None
    attempts: int | None = None
    status: str = "ok"
    created_at: _dt.datetime | None = None
    tool_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Column -> value in schema order, as :func:`write_parquet` takes a row (None is null)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestRow:
        """A row from column -> value (a manifest's ``to_pylist()`` row, a stage's dict); columns added
        later (:data:`ADDED_COLUMNS`) and other nullable ones may be absent. ValueError for a column
        the schema does not have (a typo must not silently drop data)."""
        unknown = sorted(set(data) - set(MANIFEST_SCHEMA.names))
        if unknown:
            raise ValueError(f"manifest row has columns not in the schema: {', '.join(unknown)}")
        given = dict(data)
        for name in ("class_name", "seed", "mode"):  # no default: a row read back has them (schema: not null)
            given.setdefault(name, None)
        return cls(**given)


# ---------------------------------------------------------------------------------------- writing


def _check_rows(rows: list[dict[str, Any]], schema: pa.Schema, where: str) -> None:
    names = set(schema.names)
    required = [f.name for f in schema if not f.nullable]
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - names)
        if unknown:
            raise ValueError(f"{where}: row {i} has columns not in the schema: {', '.join(unknown)}")
        for name in required:
            value = row.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(f"{where}: row {i} leaves required column {name!r} empty")


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema, where: str = "rows") -> pa.Table:
    """Validate ``rows`` against ``schema`` and build a table with exactly its columns and types."""
    _check_rows(rows, schema, where)
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as e:
        raise ValueError(f"{where}: a value does not fit the schema: {e}") from e


def write_parquet(path: str | os.PathLike[str], rows: list[dict[str, Any]], schema: pa.Schema,
                  metadata: dict[str, str] | None = None) -> Path:
    """Write ``rows`` (dicts keyed by column name; missing nullable columns become null) to
    ``path`` atomically, with ``schema``'s column order and types. ``metadata`` adds file-level
    key-value entries (facts about the whole file, e.g. a shard's rejection-sampling draws).

    Raises ValueError for unknown columns, empty required columns or values of the wrong type.
    The output is byte-identical for identical rows (no wall-clock data is added).
    """
    path = Path(path)
    table = rows_to_table(rows, schema, str(path))
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


# ---------------------------------------------------------------------------------------- reading


def parquet_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The ``*.parquet`` files of ``folder`` in name order, without temp/hidden files."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.glob("*.parquet")
        if p.is_file() and not p.name.startswith((".", "_")) and not is_temp_name(p.name)
    )


def read_manifests(folder: str | os.PathLike[str]) -> pa.Table:
    """All manifests as one table (shards in name order, rows in shard order).

    ``folder`` is a ``manifests/`` folder or a run folder (then its ``manifests/`` is read). An
    empty or missing folder gives an empty table with :data:`MANIFEST_SCHEMA`.
    """
    folder = Path(folder)
    if ArmDir(folder).has_manifests():
        folder = ArmDir(folder).manifests
    files = parquet_files(folder)
    if not files:
        return MANIFEST_SCHEMA.empty_table()
    tables = [read_manifest(p) for p in files]
    return pa.concat_tables(tables, promote_options="default")


def read_manifest(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """One manifest (``columns`` only, when given); AugmentError naming the file and the fix when it
    cannot be read (truncated, empty: a full disk, a copy cut short, a hand edit)."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise AugmentError(f"manifest {path} cannot be read ({reason}); `augment verify` lists what is broken, and "
                           "re-running `augment generate` with the same --out redoes that shard") from None


# ------------------------------------------------------------------------------------ schema docs


def schema_doc(schema: pa.Schema) -> dict[str, Any]:
    """A JSON-able description of ``schema``: per column its name, Arrow type, nullability, meaning."""
    meta = schema.metadata or {}
    return {
        "description": meta.get(b"description", b"").decode(),
        "columns": [
            {
                "name": f.name,
                "type": str(f.type),
                "nullable": f.nullable,
                "description": (f.metadata or {}).get(b"description", b"").decode(),
            }
            for f in schema
        ],
    }


def schema_doc_text(schema: pa.Schema) -> str:
    return json.dumps(schema_doc(schema), indent=2, ensure_ascii=False) + "\n"


def write_schema_docs(folder: str | os.PathLike[str] = SCHEMA_DIR) -> list[Path]:
    """(Re)generate ``manifests/schema/manifest.json`` and ``tokens.json`` from the schemas."""
    folder = Path(folder)
    return [atomic_write_text(folder / f"{name}.json", schema_doc_text(s)) for name, s in SCHEMA_DOCS.items()]


if __name__ == "__main__":  # python -m augment.io.manifest
    for p in write_schema_docs():
        print(p)
