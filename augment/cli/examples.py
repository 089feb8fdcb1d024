"""One example per command, shown at the end of its ``--help`` (click's ``epilog``).

Kept in one table rather than beside each command so that a test can check every command has one
and every example names only flags its command takes (``tests/cli/test_examples.py``).
"""

from __future__ import annotations

import click

__all__ = ["EXAMPLES", "add_examples"]

#: command path (as typed after ``augment``) -> example lines
EXAMPLES: dict[str, tuple[str, ...]] = {
    "build": ("augment build                                   # embedded digits, offline, on CPU",
              "augment build --dataset cub --data-root ~/data/CUB_200_2011 --model stabilityai/stable-diffusion-2-1-base "
              "--classes 0-9 --per-class 50 --out runs/cub"),
    "tokens": ("augment tokens --classes 3,8 --max-steps 20 --out runs/digits",),
    "generate": ("augment generate --per-class 200 --baseline --out runs/digits",
                 "augment generate --min-confidence 0.8 --max-attempts 5 --out runs/digits"),
    "caso": ("augment caso --k 5 --target self --out runs/digits",),
    "verify": ("augment verify runs/digits --no-decode",),
    "show": ("augment show runs/digits --per-class 8 --max-classes 20",),
    "report": ("augment report runs/digits      # then open runs/digits/report/index.html (no network needed)",),
    "eval": ("augment eval runs/digits --eval-classifier embedded:digits-judge",),
    "train": ("augment train --real-k 5 --synthetic runs/digits --out runs/digits",),
    "guide": ("augment guide --dataset folder --data-root ~/data/mine --k 5 --out guides/mine",
              "augment guide --k 3 --epochs 10    # digits, from scratch"),
    "benchmark": ("augment benchmark --k 1,5 --seeds 3 --arm real --arm token --out runs/digits",),
    "plan": ("augment plan --dataset cub          # the CUB preset's peak GPU memory, predicted without a GPU",
             "augment plan --dataset cub --set tokens.batch_size=2 --on cuda"),
    "config": ("augment config --dataset digits --set generate.per_class=20",
               "augment config --run runs/digits"),
    "datasets": ("augment datasets show cub      # without --data-root: the folder layout it expects",),
    "datasets list": ("augment datasets list",),
    "datasets show": ("augment datasets show digits",
                      "augment datasets show cub --data-root ~/data/CUB_200_2011 --limit 5"),
    "models": ("augment models show embedded:tiny-digits",),
    "models list": ("augment models list",),
    "models show": ("augment models show stabilityai/stable-diffusion-2-1-base", "augment models show timm:resnet18"),
    "models build-embedded": ("augment models build-embedded --budget smoke --out /tmp/embedded",),
}


def add_examples(group: click.Group, prefix: str = "") -> None:
    """Give every command under ``group`` (sub-groups included) its example as ``epilog``."""
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        lines = EXAMPLES.get(path)
        if lines and not command.epilog:
            command.epilog = "\b\nExample:\n" + "\n".join(f"  {line}" for line in lines)  # \b: keep the lines
        if isinstance(command, click.Group):
            add_examples(command, f"{path} ")
