"""New class tokens in a diffusers pipeline, stored in the diffusers textual-inversion format.

A token file holds exactly one key, the token string, mapped to a ``[1, D]`` float32 tensor, so
``pipe.load_textual_inversion([file, ...])`` loads many of them in one call into any pipeline of
the same base model. Files are written atomically (temp + rename): a token file that exists is a
finished token, which is what resume relies on.

Workers never open token files: the driver reads each file once into a :class:`TokenEmbedding`
(the token, its vectors and the sha256 of the file's bytes, which manifests record) and sends it
with the work, so a GPU node that does not share the driver's disk loads the same vectors
(diffusers' loader given state dicts instead of paths). A worker's pipeline is its host's, shared
with the other stages of a build, so workers add tokens only for a block
(:func:`installed_tokens`) that leaves the pipeline as it found it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from augment.errors import AugmentError
from augment.io.atomic import atomic_write_bytes


def token_string(class_index: int) -> str:
    return f"<c{class_index:04d}>"


#: the forms of every token string augment adds to a tokenizer: DisCo's ``<c0042>``, CASO's
#: ``<caso0042>`` / ``<caso0042to0007>``, and the ``_1``, ``_2`` ... of a multi-vector embedding
TOKEN_RE = re.compile(r"<(?:c\d{4,}|caso\d{4,}(?:to\d{4,})?)(?:_\d+)?>")


def check_names_hold_no_token(names: Sequence[str]) -> None:
    """Refuse a class name that contains a token string (``"fox <c0000>"``): the tokenizer would
    read it as that token, and the class's prompts would carry another class's embedding."""
    for i, name in enumerate(names):
        found = TOKEN_RE.search(name)
        if found:
            raise AugmentError(
                f"class {i} name {name!r} contains {found.group()!r}, the form of augment's class tokens, so its "
                "prompts would use that token's embedding; rename the class (its folder or label map) without it"
            )


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


def vector_tokens(token: str, n: int) -> list[str]:
    """The token strings diffusers uses for a multi-vector embedding: token, token_1, token_2, ..."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def save_token(path: Path, token: str, embedding: torch.Tensor) -> str:
    """Write one token file atomically; returns its sha256."""
    from safetensors.torch import save

    # [D] or [1, D]: one vector; [n, D]: a multi-vector embedding (diffusers adds token_1 ... token_{n-1}).
    vec = embedding.detach().float()
    vec = vec.reshape(1, -1) if vec.dim() == 1 else vec.reshape(-1, vec.shape[-1])
    data = save({token: vec.contiguous().cpu()})
    atomic_write_bytes(path, data)  # mode 0644 (umask) like every other output, not mkstemp's 0600
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
    token, vectors = next(iter(state.items()))
    if vectors.dim() not in (1, 2) or vectors.numel() == 0:
        raise AugmentError(f"{where} holds a tensor of shape {list(vectors.shape)}; a token file holds [1, D] or "
                           "[n, D] (D = the text encoder's width): delete it and re-run `augment tokens`")
    return token, vectors


def check_token(emb: TokenEmbedding, where: str, token: str, width: int | None) -> TokenEmbedding:
    """``emb`` when it is the token ``token`` with vectors ``width`` wide (None: any width); else
    one line naming the file, what it holds and what was expected (a file copied from another
    class or another model would otherwise be used silently, or fail deep inside diffusers)."""
    fix = "delete it and re-run `augment tokens` with the same --out"
    if emb.token != token:
        raise AugmentError(f"{where} holds the token {emb.token!r}, expected {token!r} (it belongs to another class "
                           f"or run); {fix}")
    if width is not None and emb.vectors.shape[-1] != width:
        raise AugmentError(f"{where} holds a tensor of shape {list(emb.vectors.shape)}, expected [1, {width}] "
                           f"(this model's text width is {width}); {fix}")
    return emb


def read_token(path: Path) -> tuple[str, torch.Tensor]:
    """The (token, vectors) of a token file."""
    emb = read_token_embedding(path)
    return emb.token, emb.vectors


def read_token_embedding(path: Path) -> TokenEmbedding:
    """Read a token file once: its token, vectors and the sha256 of exactly the bytes decoded."""
    data = Path(path).read_bytes()
    token, vectors = decode_token(data, str(path))
    return TokenEmbedding(token, vectors, hashlib.sha256(data).hexdigest())


def _refuse_held(pipe, tokens: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Each token's strings (``token``, ``token_1`` ...), none of them already in the tokenizer: a
    token the model came with, or one installed by an enclosing block, must not be shadowed."""
    vocab = pipe.tokenizer.get_vocab()
    names = {token: vector_tokens(token, vectors.reshape(-1, vectors.shape[-1]).shape[0])
             for token, vectors in tokens.items()}
    for token, strings in names.items():
        if any(s in vocab for s in strings):
            raise AugmentError(
                f"the tokenizer already contains {token!r}; load a fresh pipeline (tokens of an earlier run "
                "must not be loaded while training) or pick another run folder"
            )
    return names


def add_embeddings(pipe, embeddings: Sequence[TokenEmbedding]) -> list[str]:
    """Put token embeddings into ``pipe`` for good (a pipeline of one's own: tests, benchmarks);
    returns the token strings in order. Diffusers' own loader, given state dicts, not files."""
    tokens = {e.token: e.vectors for e in embeddings}
    _refuse_held(pipe, tokens)
    if tokens:
        pipe.load_textual_inversion([{t: v} for t, v in tokens.items()])
    return list(tokens)


@contextmanager
def installed_tokens(pipe, tokens: Mapping[str, torch.Tensor]) -> Iterator[list[str]]:
    """``tokens`` (token string -> its ``[n, D]`` vectors) in ``pipe`` inside the block only;
    yields the token strings in order.

    A worker host's pipeline is shared by the stages of a build (:mod:`augment.models.cache`):
    what one stage adds must not reach the next. Diffusers loads the tokens (one embedding row per
    vector, ``token_1`` ... for a multi-vector one) and unloads them from the tokenizer after; the
    embedding table itself is put back (the very tensor, never written to while the tokens were in:
    a resize copies it), with the text encoder's ``vocab_size``, so the pipeline is exactly the one
    it was before, whatever the block did to the added rows (DisCo and CASO train them)."""
    if not tokens:
        yield []
        return
    names = _refuse_held(pipe, tokens)
    text_encoder = pipe.text_encoder
    layer = text_encoder.get_input_embeddings()
    table, vocab_size = layer.weight.data, text_encoder.config.vocab_size
    try:
        pipe.load_textual_inversion([{t: v} for t, v in tokens.items()])
        yield list(tokens)
    finally:
        held = set(pipe.tokenizer.get_vocab())
        strings = [s for token in tokens for s in names[token] if s in held]
        if strings:  # the tokenizer: diffusers' removal (slow and fast tokenizers alike)
            pipe.unload_textual_inversion(strings)
        text_encoder.set_input_embeddings(layer)
        layer.weight.data, layer.num_embeddings = table, table.shape[0]
        text_encoder.config.vocab_size = vocab_size


def load_tokens(pipe, paths: list[Path]) -> list[str]:
    """Load token files into ``pipe`` (local use: tests, benchmarks); returns the token strings."""
    return add_embeddings(pipe, [read_token_embedding(p) for p in paths])
