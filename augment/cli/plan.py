"""``augment plan``: the predicted peak memory of a config's token step, generation and downstream batches.

No GPU and no weights are needed: :mod:`augment.models.memory` counts the tensors on PyTorch's
``meta`` device from the model's configs. The same resolution as every command (``augment
config`` prints the settings this predicts for).
"""

from __future__ import annotations

import click

from augment.cli.options import build_config, command, config_options


@command("plan")
@config_options("config")  # the flags of `augment config`: plan predicts for what config prints
@click.option("--on", "target", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="Predict for a GPU (the resolved --dtype, fused attention) or for the CPU (float32).")
def plan_cmd(target: str, **kwargs) -> None:
    """Predict the peak memory of a token step, a generation batch and a downstream batch (no GPU needed).

    Counted on PyTorch's meta device from the model's configs: weights, the activations kept for
    backward and the largest transient; a CUDA context and workspaces (~0.5 GB) come on top.
    Example: `augment plan --dataset cub` (the CUB preset: SD 2.1-base, batch 5, 512 px).
    """
    from augment.models.memory import plan

    cfg = build_config(kwargs, command="config")
    click.echo(f"predicted peak memory on {target} (tensors; model {cfg.model}, classifier {cfg.classifier}):")
    for estimate in plan(cfg, target):
        click.echo("  " + estimate.line())


COMMANDS = (plan_cmd,)
