"""The tiny-digits text side: a CLIP tokenizer generated offline and the small CLIP text encoder.

The vocabulary makes every caption word, DisCo prompt word and initialiser word a single token
(DisCo initialises a class token from one word); any other text falls back to byte-level pieces.
"""

from __future__ import annotations

from pathlib import Path

from augment.datasets.digits import DIGIT_NAMES
from augment.models.embedded.captions import GENERIC_CAPTIONS, NAMED_TEMPLATES, SHAPE_TEMPLATES, SHAPE_WORDS
from augment.models.tokenizer import write_clip_tokenizer_files

__all__ = [
    "EXTRA_WORDS",
    "MAX_TEXT_LENGTH",
    "TEXT_CONFIG",
    "build_tokenizer",
    "make_text_encoder",
    "tokenizer_words",
]

#: words that must each be a single token (captions, DisCo prompts, initialiser tokens)
EXTRA_WORDS = (
    "a photo of the digit handwritten number image high resolution realistic picture drawing bird an this is"
).split()

# Captions and DisCo prompts are under 10 tokens; 32 positions leave room for longer user prompts.
MAX_TEXT_LENGTH = 32
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_TEXT_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=64,
)


def tokenizer_words() -> list[str]:
    """Every word that must be one token, in first-seen order (the vocabulary's merge order)."""
    words: list[str] = []
    texts = (
        GENERIC_CAPTIONS
        + [t.format(name=n) for t in NAMED_TEMPLATES for n in DIGIT_NAMES]
        + [t.format(shape=w) for t in SHAPE_TEMPLATES for w in SHAPE_WORDS]
        + EXTRA_WORDS
    )
    for text in texts:
        for w in text.lower().split():
            if w not in words:
                words.append(w)
    return words


def build_tokenizer(folder: Path, max_length: int = MAX_TEXT_LENGTH):
    """Write vocab.json + merges.txt into `folder` and return a `CLIPTokenizer` loaded from them."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder, tokenizer_words(), max_length=max_length)
    tok = CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)
    for w in tokenizer_words():
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, (w, ids, tok.convert_ids_to_tokens(ids))
    return tok


def make_text_encoder(tokenizer):
    """A small CLIP text encoder sized to the generated vocabulary (trained jointly with the UNet)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_CONFIG,
    )
    return CLIPTextModel(cfg)
