"""``augment plan``: the predicted peak memory of a config's token step, generation and downstream batches.

No GPU and no weights are needed: :mod:`augment.models.memory` counts the tensors on PyTorch's
``meta`` device from the model's configs. The same resolution as every command (``augment
config`` prints the settings this predicts for).
"""

from __future__ import annotations

import click

from augment.cli.catalog import _setting
from augment.cli.options import build_config, command, common_options, grad_steps_option
from augment.cli.stages import generate_options, generate_overrides


@command("plan")
@common_options
@generate_options
@click.option("--grad-steps", help="Final denoising steps the gradient flows through: an integer or 'all'.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any config key, dotted, with a YAML value (e.g. --set tokens.batch_size=1); repeatable.")
@click.option("--on", "target", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="Predict for a GPU (the resolved --dtype, fused attention) or for the CPU (float32).")
def plan_cmd(grad_steps: str | None, settings: tuple[str, ...], target: str, **kwargs) -> None:
    """Predict the peak memory of a token step, a generation batch and a downstream batch (no GPU needed).

    Counted on PyTorch's meta device from the model's configs: weights, the activations kept for
    backward and the largest transient; a CUDA context and workspaces (~0.5 GB) come on top.
    Example: `augment plan --dataset cub` (the CUB preset: SD 2.1-base, batch 5, 512 px).
    """
    from augment.models.memory import plan

    extra = generate_overrides(kwargs) | {"tokens.grad_steps": grad_steps_option(grad_steps)}
    extra |= dict(_setting(s) for s in settings)
    cfg = build_config(kwargs, extra)
    click.echo(f"predicted peak memory on {target} (tensors; model {cfg.model}, classifier {cfg.classifier}):")
    for estimate in plan(cfg, target):
        click.echo("  " + estimate.line())


COMMANDS = (plan_cmd,)
