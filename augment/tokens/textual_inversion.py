"""New class tokens in a diffusers pipeline, stored in the diffusers textual-inversion format.

A token file holds exactly one key, the token string, mapped to a ``[1, D]`` float32 tensor, so
``pipe.load_textual_inversion([file, ...])`` loads many of them in one call into any pipeline of
the same base model. Files are written atomically (temp + rename): a token file that exists is a
finished token, which is what resume relies on.

Workers never open token files: the driver reads each file once into a :class:`TokenEmbedding`
(the token, its vectors and the sha256 of the file's bytes, which manifests record) and sends it
with the work, so a GPU node that does not share the driver's disk loads the same vectors
(:func:`add_embeddings`, diffusers' loader given state dicts instead of paths).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from augment.errors import AugmentError


def token_string(class_index: int) -> str:
    return f"<c{class_index:04d}>"


def vector_tokens(token: str, n: int) -> list[str]:
    """The token strings diffusers uses for a multi-vector embedding: token, token_1, token_2, ...

    ``pipe.load_textual_inversion`` of an ``[n, D]`` tensor adds exactly these, and its prompt
    conversion replaces ``token`` in a prompt by all of them, space-separated."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def single_token_id(tokenizer, word: str) -> int:
    """The id of ``word`` if it is exactly one token, else a one-line error."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise AugmentError(
            f"initialiser {word!r} is not a single token for this tokenizer (it splits into {pieces}); "
            "pass tokens.init_token as one word the tokenizer knows, e.g. 'a'"
        )
    return ids[0]


def add_token(pipe, token: str, init_id: int, reuse: bool = False) -> int:
    """Add ``token`` to the tokenizer and a new embedding row initialised from row ``init_id``.

    Every existing row stays bit-identical (resize copies them). A token already present is an
    error unless ``reuse`` (a retry of the same class in the same worker process).
    """
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    if token in tokenizer.get_vocab():
        if reuse:
            return tokenizer.convert_tokens_to_ids(token)
        raise AugmentError(
            f"the tokenizer already contains {token!r}; load a fresh pipeline (tokens of an earlier run "
            "must not be loaded while training) or pick another run folder"
        )
    tokenizer.add_tokens([token])
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        emb[token_id] = emb[init_id]
    return token_id


def save_token(path: Path, token: str, embedding: torch.Tensor) -> str:
    """Write one token file atomically; returns its sha256."""
    from safetensors.torch import save

    # [D] or [1, D]: one vector; [n, D]: a multi-vector embedding (diffusers adds token_1 ... token_{n-1}).
    vec = embedding.detach().float()
    vec = vec.reshape(1, -1) if vec.dim() == 1 else vec.reshape(-1, vec.shape[-1])
    data = save({token: vec.contiguous().cpu()})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TokenEmbedding:
    """One token file's content, read by the driver: what a worker needs instead of the file's path.

    ``vectors`` is the stored float32 tensor as is (``[1, D]`` DisCo, ``[n, D]`` CASO) and
    ``sha256`` the hash of the file's bytes (a manifest's ``token_sha256``)."""

    token: str
    vectors: torch.Tensor
    sha256: str


def decode_token(data: bytes, where: str) -> tuple[str, torch.Tensor]:
    """The one (token, tensor) pair of a token file's bytes (safetensors: nothing is unpickled)."""
    from safetensors.torch import load

    try:
        state = load(data)
    except Exception as e:  # noqa: BLE001 - a corrupt file is one user problem whatever the decoder says
        raise AugmentError(f"cannot read token file {where}: {str(e).splitlines()[0][:120]}; "
                           "delete it and re-run `augment tokens` to retrain that class") from None
    if len(state) != 1:
        raise AugmentError(f"{where} holds {len(state)} keys; a token file holds exactly one (the token)")
    return next(iter(state.items()))


def read_token(path: Path) -> tuple[str, torch.Tensor]:
    """The (token, vectors) of a token file."""
    emb = read_token_embedding(path)
    return emb.token, emb.vectors


def read_token_embedding(path: Path) -> TokenEmbedding:
    """Read a token file once: its token, vectors and the sha256 of exactly the bytes decoded."""
    data = Path(path).read_bytes()
    token, vectors = decode_token(data, str(path))
    return TokenEmbedding(token, vectors, hashlib.sha256(data).hexdigest())


def add_embeddings(pipe, embeddings: Sequence[TokenEmbedding]) -> list[str]:
    """Add token embeddings to ``pipe`` in memory with diffusers' own loader (given state dicts,
    not files); tokens the pipeline already has are skipped. Returns the token strings in order."""
    present = pipe.tokenizer.get_vocab()
    todo = [e for e in embeddings if e.token not in present]
    if todo:
        pipe.load_textual_inversion([{e.token: e.vectors} for e in todo])
    return [e.token for e in embeddings]


def load_tokens(pipe, paths: list[Path]) -> list[str]:
    """Load token files into ``pipe`` (local use: tests, benchmarks); returns the token strings."""
    return add_embeddings(pipe, [read_token_embedding(p) for p in paths])
