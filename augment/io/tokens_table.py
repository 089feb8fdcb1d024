"""``tokens/tokens.parquet`` as typed rows: what the token and caso stages hand to later stages.

One :class:`TokenRow` per class, with exactly the columns of
:data:`augment.io.manifest.TOKENS_SCHEMA` (``manifests/schema/tokens.json``; ARCHITECTURE.md,
"Data contracts"). The stages build rows as objects, so a column is named once, here, and not in
every dict a stage writes; :func:`write_token_rows` keeps the file's bytes what they were when
stages wrote dicts (absent and None columns are both null).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from augment.errors import AugmentError
from augment.io.manifest import TOKENS_SCHEMA, write_parquet

__all__ = ["TokenRow", "read_token_rows", "write_token_rows"]


@dataclass
class TokenRow:
    """One row of tokens.parquet (see the schema for what each column means).

    ``status`` is ``ok`` or ``failed``; a failed row has ``error`` and no ``token_file``.
    """

    class_index: int
    class_name: str
    token: str
    init_token: str | None = None
    token_file: str | None = None
    token_sha256: str | None = None
    steps: int | None = None
    best_loss: float | None = None
    final_accuracy: float | None = None
    seconds: float | None = None
    status: str = "ok"
    error: str | None = None
    grad_steps: str | None = None
    lr: float | None = None
    seeds: list[int] | None = None
    model_id: str | None = None
    init_val_accuracy: float | None = None
    final_val_accuracy: float | None = None
    n_vectors: int | None = None
    negative_prompt: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as ``write_parquet`` takes it (column -> value)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenRow:
        """A row read back from the table (``pyarrow``'s ``to_pylist``); unknown columns are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"tokens.parquet row has columns not in the schema: {', '.join(unknown)}")
        return cls(**dict(data))


def read_token_rows(path: str | os.PathLike[str]) -> dict[int, TokenRow]:
    """The rows of ``path`` by class index; empty when the file does not exist yet. A file that is
    not a readable tokens table (overwritten, cut short by something other than augment's atomic
    writes) is one AugmentError naming it, never a pyarrow traceback: every stage that resumes
    from it (tokens, generate, caso) reads it here."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        table = pq.read_table(path)
        return {int(r["class_index"]): TokenRow.from_json(r) for r in table.to_pylist()}
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise AugmentError(f"{path} is not a readable tokens table ({first}); move it aside and re-run the same "
                           "command (classes whose token file has no row are trained again)") from None


def write_token_rows(path: str | os.PathLike[str], rows: Mapping[int, TokenRow]) -> Path:
    """Write ``rows`` (class index -> row) atomically, in class order."""
    return write_parquet(path, [rows[k].to_json() for k in sorted(rows)], TOKENS_SCHEMA)
