"""Write a CLIP-format BPE vocabulary offline.

No CLIP tokenizer can be downloaded here, yet the embedded model and the test fixtures need one
that ``CLIPTokenizer.from_pretrained(dir)`` loads exactly like Stable Diffusion's. The vocabulary
holds the 256 byte-level symbols (and their end-of-word forms, so any text tokenizes) plus a chain
of merges that makes each given word a single token, which DisCo needs for initialiser tokens.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_clip_tokenizer_files(folder: Path, words: list[str], max_length: int = 77) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs into ``folder``.

    Every word in ``words`` (lower case, no spaces) becomes one token; all other text falls back
    to byte-level pieces. Merges never contain a bare ``</w>`` (the fast tokenizer rejects it).
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    vocab: list[str] = base + [b + "</w>" for b in base]
    seen = set(vocab)
    merges: list[tuple[str, str]] = []
    byte_map = bytes_to_unicode()
    ranks: dict[tuple[str, str], int] = {}

    def bpe(symbols: list[str]) -> list[str]:
        # The same rank-ordered merging the tokenizers library does, to check our merges.
        pieces = list(symbols)
        while len(pieces) > 1:
            pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(itertools.pairwise(pieces))]
            best, i = min(pairs)
            if best == 1 << 30:
                break
            pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
        return pieces

    targets = []
    for word in sorted({w.lower() for w in words if w.strip()}):
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        symbols[-1] = symbols[-1] + "</w>"
        targets.append(symbols)
    for _ in range(10):  # later merges can re-split earlier words: repeat until stable
        changed = False
        for symbols in targets:
            pieces = bpe(symbols)
            while len(pieces) > 1:
                pair = (pieces[0], pieces[1])
                ranks[pair] = len(ranks)
                merges.append(pair)
                merged = pair[0] + pair[1]
                if merged not in seen:
                    seen.add(merged)
                    vocab.append(merged)
                changed = True
                pieces = bpe(symbols)
        if not changed:
            break
    vocab += [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": EOS,
                "do_lower_case": True,
            }
        )
    )
