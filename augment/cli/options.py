"""What every command shares: the common options, config resolution, and error handling.

Commands resolve their settings only through :func:`build_config` (defaults < preset < --config <
run.json where a run folder is read < flags, :func:`augment.config.resolve_config`), so ``build``,
``train`` and ``augment config`` see the same precedence. User mistakes are
:class:`~augment.errors.AugmentError`; :class:`AugmentGroup` turns them into one ``Error: ...`` line
on stderr with exit code 2, wherever in a stage they are raised.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any, get_args, get_type_hints

import click

from augment.config import Config, Setting, load_yaml, resolve_config, settings_of
from augment.errors import AugmentError, Terminated

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

class UserError(click.ClickException):
    """How the CLI shows an AugmentError: ``Error: <message>`` on stderr, exit code 2."""

    exit_code = AugmentError.exit_code


#: what to do about a file-system error a command meets where it writes, by errno: the user's
#: environment (a full disk, a file in the way, a name too long, no permission), not a bug
_FS_FIXES = {
    errno.ENOSPC: "free space, then re-run the same command (finished files are kept)",
    errno.EDQUOT: "free space in your quota, then re-run the same command (finished files are kept)",
    errno.EFBIG: "free space or raise the file-size limit, then re-run the same command (finished files are kept)",
    errno.EEXIST: "a file is where a folder must go; move it aside and re-run",
    errno.ENOTDIR: "a file is where a folder must go; move it aside and re-run",
    errno.EISDIR: "a folder is where a file must go; move it aside and re-run",
    errno.ENAMETOOLONG: "a path component is longer than the file system allows (255 bytes); choose a shorter --out",
    errno.EACCES: "fix its permissions or choose another --out",
    errno.EPERM: "fix its permissions or choose another --out",
    errno.EROFS: "the file system is read-only; choose another --out",
}


def fs_error_line(e: OSError) -> str | None:
    """The one line for a file-system error of the user's environment (:data:`_FS_FIXES`): the
    path, the reason and the fix; None for any other OSError (a bug keeps its traceback). Every
    command's writes end here when a stage did not already name them (a stage's own message says
    which file of which arm)."""
    fix = _FS_FIXES.get(e.errno) if e.errno is not None else None
    if fix is None:
        return None
    where = f" {e.filename}" if e.filename else ""
    return f"cannot write{where}: {e.strerror or os.strerror(e.errno)}; {fix}"


#: what re-running says after Ctrl-C, for the commands that resume (the stages skip finished
#: units, benchmark its finished cells); every other command starts again
_RESUME_HINTS = {name: "re-run the same command to resume" for name in ("tokens", "generate", "caso", "build", "benchmark")}
_RESUME_HINTS["train"] = ("training does not resume: re-running the same command trains again from the start "
                          "(the best epoch so far is in OUT/best.safetensors)")
_RESTART_HINT = "nothing was left half-written; re-run the same command to start again"


def _command_name(ctx: click.Context) -> str | None:
    """The command being run: this context's, or the subcommand a group is running."""
    return ctx.invoked_subcommand if isinstance(ctx.command, click.Group) else ctx.command.name


def _invoke_mapped(invoke: Callable[[click.Context], Any], ctx: click.Context) -> Any:
    try:
        return invoke(ctx)
    except AugmentError as e:  # several problems (AugmentErrors): one `Error:` line each
        raise UserError("\nError: ".join(e.message.splitlines())) from None
    except OSError as e:
        line = fs_error_line(e)
        if line is None:
            raise
        raise UserError(line) from None
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated; inside a blocking Ray call Ray
        # raises a plain KeyboardInterrupt in its place, told apart by Terminated.received): the same
        # clean-up, then 128 + the signal, as a shell reports it
        hint = _RESUME_HINTS.get(_command_name(ctx), _RESTART_HINT)
        signum = e.signum if isinstance(e, Terminated) else Terminated.received
        if signum is not None:
            click.echo(f"terminated; {hint}", err=True)
            sys.exit(128 + signum)
        click.echo(f"interrupted; {hint}", err=True)
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


#: the order of the sections' flags in --help (the config's own flags first)
_HELP_SECTIONS = ("", "generate", "tokens", "caso", "train")
_CLI_TYPES: dict[Any, Any] = {int: int, float: float, str: str, "path": click.Path(), "file": click.Path(dir_okay=False)}


def _param(flag: str) -> str:
    """The click parameter name of a flag: ``--per-class`` -> ``per_class``."""
    return flag.lstrip("-").replace("-", "_")


def _field(key: str) -> tuple[type, str]:
    """The dataclass that declares a dotted key, and the key's leaf: ``tokens.lr`` -> (TokenConfig, "lr")."""
    cls: Any = Config
    *sections, leaf = key.split(".")
    for name in sections:
        cls = {f.name: f for f in fields(cls)}[name].default_factory
    return cls, leaf


def command_settings(command: str) -> list[tuple[str, Setting]]:
    """The settings ``command`` takes as flags, ``(dotted key, Setting)``, in --help order: the
    config's own first, then by section (:data:`_HELP_SECTIONS`), each by its declared ``order``
    (default: its place in its dataclass)."""
    def rank(item: tuple[str, Setting]) -> tuple[int, float]:
        key, s = item
        cls, leaf = _field(key)
        place = s.order if s.order is not None else [f.name for f in fields(cls)].index(leaf)
        return _HELP_SECTIONS.index(key.rpartition(".")[0]), place

    return sorted(((key, s) for key, s in settings_of() if command in s.commands), key=rank)


def _option(key: str, s: Setting) -> Callable:
    """The click option of one setting, from its declaration (not given: None, so the value from
    the lower layers stands)."""
    cls, leaf = _field(key)
    hint = get_type_hints(cls)[leaf]
    flag = s.flag_of(key) or ""
    if hint is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", _param(flag), default=None, help=s.help)
    if s.choices is not None:
        kind: Any = click.Choice(list(s.choices))
    else:
        kind = _CLI_TYPES[s.cli_type if s.cli_type is not None else
                          next(t for t in (int, float, str) if hint is t or t in get_args(hint))]
    return click.option(flag, _param(flag), type=kind, default=None, help=s.help)


def config_options(command: str) -> Callable[[Callable], Callable]:
    """--config, every settings flag of ``command`` (the ones every config-resolving command takes
    first: dataset, model, seed, ...) and --set, generated from the declarations
    (:class:`augment.config.Setting`); the command's other options follow."""
    return add_options([
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of settings (overrides the preset)."),
        *[_option(key, s) for key, s in command_settings(command)],
        set_option,
    ])


#: --set KEY=VALUE: any config key, at the flags' precedence, on every command that resolves a config
set_option = click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE",
                          help="Any config key, dotted, with a YAML value (e.g. --set tokens.lr=0.01); repeatable.")


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of --set: a dotted config key and a YAML value."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise AugmentError(f"--set {item!r}: use KEY=VALUE with a dotted config key, e.g. --set tokens.lr=0.01")
    try:
        return key.strip(), load_yaml(value, f"--set {key.strip()}")
    except AugmentError as e:
        if "YAML syntax" in str(e):
            raise AugmentError(f"--set {item!r}: the value is not valid YAML; quote it") from None
        raise


def setting_overrides(kwargs: dict[str, Any], command: str) -> dict[str, Any]:
    """Pop ``command``'s settings flags from ``kwargs`` as dotted overrides (each flag's text parsed
    as declared; flags not given are left out), then --set's items, which apply at the same level."""
    overrides: dict[str, Any] = {}
    for key, s in command_settings(command):
        value = kwargs.pop(_param(s.flag_of(key) or ""), None)
        if value is not None:
            overrides[key] = s.parse(value) if s.parse is not None else value
    overrides.update(parse_set(item) for item in kwargs.pop("set_items", None) or ())
    return overrides


def build_config(kwargs: dict[str, Any], extra: dict[str, Any] | None = None, run: str | None = None,
                 command: str | None = None) -> Config:
    """Pop the settings flags and --set from ``kwargs`` and resolve the config.

    ``command``: whose flags (default: the click command being run); ``extra`` holds flags the
    command collected itself, as dotted config keys (None = not given); ``run`` is a run folder
    whose run.json applies (commands that read an existing run).
    """
    from augment.io.rundir import run_settings

    command = command or click.get_current_context().command.name
    overrides = setting_overrides(kwargs, command)
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    recorded = run_settings(run) if run is not None else None
    return resolve_config(kwargs.pop("config_file", None), overrides, dataset=overrides.get("dataset"), run=run,
                          recorded=recorded)


def int_list(value: str | None, flag: str) -> list[int] | None:
    """A comma-separated list of integers (None: not given)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise AugmentError(f"{flag} {value!r}: use comma-separated integers, e.g. 0,3,9,15") from None
