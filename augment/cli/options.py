"""What every command shares: the common options, config resolution, and error handling.

Commands resolve their settings only through :func:`build_config` (defaults < preset < --config <
run.json where a run folder is read < flags, :func:`augment.config.resolve_config`), so ``build``,
``train`` and ``augment config`` see the same precedence. User mistakes are
:class:`~augment.errors.AugmentError`; :class:`AugmentGroup` turns them into one ``Error: ...`` line
on stderr with exit code 2, wherever in a stage they are raised.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from augment.config import Config, parse_grad_steps, resolve_config
from augment.errors import AugmentError

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: the common options that are config keys (``--config`` is the file itself)
COMMON = ("dataset", "data_root", "model", "classifier", "out", "seed", "device", "dtype", "classes",
          "workers", "address", "gpus_per_worker", "placement_timeout")


class UserError(click.ClickException):
    """How the CLI shows an AugmentError: ``Error: <message>`` on stderr, exit code 2."""

    exit_code = AugmentError.exit_code


def _invoke_mapped(invoke: Callable[[click.Context], Any], ctx: click.Context) -> Any:
    try:
        return invoke(ctx)
    except AugmentError as e:
        raise UserError(e.message) from None
    except KeyboardInterrupt:
        click.echo("interrupted; re-run the same command to resume", err=True)
        sys.exit(130)


_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _parse_mapped(make: Callable[[], click.Context]) -> click.Context:
    """Click's own usage errors (a bad flag value, an unknown option or command) as the same one
    line as an AugmentError, naming the fix, instead of click's usage block on four lines."""
    try:
        return make()
    except _NO_ARGS_HELP:  # a bare group prints its help (click >= 8.2 raises it as a usage error)
        raise
    except click.UsageError as e:
        where = f"; see `{e.ctx.command_path} --help`" if e.ctx is not None else ""
        raise UserError(e.format_message().rstrip(".") + where) from None


def _output_options() -> list[click.Option]:
    """-v / -q / --log-file, which every command takes (:mod:`augment.logs` says what they do)."""
    return [
        click.Option(["-v", "--verbose"], is_flag=True,
                     help="Also the libraries' messages and bars (model loading), Ray actors' included."),
        click.Option(["-q", "--quiet"], is_flag=True, help="No progress bars: summary lines and errors only."),
        click.Option(["--log-file"], type=click.Path(dir_okay=False),
                     help="Also append what the command prints (timestamped lines) to this file."),
    ]


class AugmentCommand(click.Command):
    """A click command that maps AugmentError (raised anywhere in a stage) and bad flags to one
    line + exit 2 and Ctrl-C to a resume hint, also when the command is invoked on its own (tests,
    other groups); every one takes the output options (-v, -q, --log-file)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_output_options())

    def invoke(self, ctx: click.Context) -> Any:
        from augment import logs

        verbose, quiet, log_file = (ctx.params.pop(k, None) for k in ("verbose", "quiet", "log_file"))
        if verbose and quiet:
            raise UserError("-v and -q contradict each other; pass one of them")
        try:
            log = logs.open_log(log_file)
        except AugmentError as e:
            raise UserError(e.message) from None
        logs.set_verbosity(1 if verbose else -1 if quiet else 0)
        given = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in ctx.params.items()
                 if v is not None and v is not False and v != ()]
        with logs.recording(log, " ".join([ctx.command_path, *given])) as note:
            try:
                return _invoke_mapped(super().invoke, ctx)
            except click.ClickException as e:  # click prints it after this block: record it here
                note(f"Error: {e.format_message()}")
                raise

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        return _parse_mapped(lambda: super(AugmentCommand, self).make_context(info_name, args, parent, **extra))


class AugmentGroup(click.Group):
    """The same mapping for groups; commands created through a group are :class:`AugmentCommand`."""

    command_class = AugmentCommand
    group_class = type

    def invoke(self, ctx: click.Context) -> Any:
        return _parse_mapped(lambda: _invoke_mapped(super(AugmentGroup, self).invoke, ctx))

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        return _parse_mapped(lambda: super(AugmentGroup, self).make_context(info_name, args, parent, **extra))


def command(name: str | None = None, **attrs: Any) -> Callable[[Callable], click.Command]:
    """``click.command`` with :class:`AugmentCommand` (use it for every augment command)."""
    return click.command(name, cls=AugmentCommand, **attrs)


def group(name: str | None = None, **attrs: Any) -> Callable[[Callable], click.Group]:
    """``click.group`` with :class:`AugmentGroup`."""
    return click.group(name, cls=AugmentGroup, **attrs)


def add_options(opts: list[Callable]) -> Callable[[Callable], Callable]:
    """Decorator applying click options in the order listed (as they appear in --help)."""

    def decorate(f: Callable) -> Callable:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


common_options = add_options([
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of settings (overrides the preset)."),
    click.option("--dataset", help="Dataset name: digits, cub, inat, imagenet, folder (selects pipelines/<name>.yaml)."),
    click.option("--data-root", type=click.Path(), help="Folder holding the dataset's images."),
    click.option("--model", help="Diffusion backbone: embedded:<name>, a pipeline folder, or a hub id."),
    click.option("--classifier", help="Guidance classifier: embedded:<name>, timm:<arch>[@ckpt], hf:<repo-or-folder>."),
    click.option("--out", help="Run folder (default: runs/<dataset>)."),
    click.option("--seed", type=int, help="Run seed; every sample's seed derives from it."),
    click.option("--device", help="auto, cpu, cuda or cuda:N."),
    click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), help="Compute dtype (CPU always uses float32)."),
    click.option("--classes", help="Class selection: indices 3,8, ranges 0-9 or class names (default: all)."),
    click.option("--workers", type=int, help="Ray actors to run (each asks for --gpus-per-worker GPUs when the device wants CUDA); 0 runs inline."),
    click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a Ray head running here, else a private local Ray)."),
    click.option("--gpus-per-worker", type=float, help="GPUs each Ray actor asks for on --device cuda (or auto on a GPU cluster); 0.5 puts two on a GPU."),
    click.option("--placement-timeout", type=float, help="Seconds to wait for Ray nodes that can take the actors before giving up (default 300)."),
])


def build_config(kwargs: dict[str, Any], extra: dict[str, Any] | None = None, run: str | None = None) -> Config:
    """Pop the common options from ``kwargs`` and resolve the config.

    ``extra`` holds the command's own flags as dotted config keys (``tokens.lr``; None = not given);
    ``run`` is a run folder whose run.json applies (commands that read an existing run).
    """
    overrides = {k: kwargs.pop(k, None) for k in COMMON}
    overrides.update(extra or {})
    return resolve_config(kwargs.pop("config_file", None), overrides, dataset=overrides.get("dataset"), run=run)


def grad_steps_option(value: str | None) -> int | str | None:
    """--grad-steps: an integer or 'all' (None: not given)."""
    return None if value is None else parse_grad_steps(value, "--grad-steps")


def int_list(value: str | None, flag: str) -> list[int] | None:
    """A comma-separated list of integers (None: not given)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise AugmentError(f"{flag} {value!r}: use comma-separated integers, e.g. 0,3,9,15") from None
