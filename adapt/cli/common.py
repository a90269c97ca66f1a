"""The `adapt` click group, its error handling and the options commands share."""

from __future__ import annotations

import errno
import functools
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapt.errors import AdaptError, speaking_flags
from adapt.progress import console as progress_console
from adapt.train_config import CONFIG_FILE, RESULT_FREE

# one console with the library's progress bars (adapt.progress): only rank 0 prints, markup off
console = progress_console
errors = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

# OSErrors that are the user's situation (disk full, read-only folder, file size limit, a
# path that is a file or a folder), not a bug: they end in one line like AdaptError.
USER_OS_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EACCES,
                  errno.EPERM, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOENT, errno.ELOOP}  # fmt: skip
REPORT = "this is a bug in adapt: please report it with the traceback above"


def one_line(error: BaseException) -> str:
    """The user-facing line of an error; a DataLoader worker's wrapped error becomes its original line."""
    text = str(error).strip()
    if "Original Traceback" in text:  # torch re-raises a worker's exception with its traceback in the message
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(text.split()) or type(error).__name__


def fail(message: str, code: int = 1) -> None:
    errors.print(Text("error: ", style="bold red") + Text(message))
    sys.exit(code)


class AdaptGroup(click.Group):
    """Turns the user's errors into one line on stderr and a non-zero exit (no traceback).

    AdaptError (bad input), the OSErrors of a full disk, a read-only folder or a file size
    limit, running out of memory and Ctrl-C each end in one line. Anything else is a bug:
    its traceback is shown, with a line asking to report it."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Click's usage errors (bad option values, unknown options) as one line too, exit status 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as error:
            path = error.ctx.command_path if getattr(error, "ctx", None) else ""
            command = f" {path.split(' ', 1)[1]}" if " " in path else ""
            fail(f"{one_line(Exception(error.format_message()))} (see adapt{command} --help)", error.exit_code)
        except click.Abort:
            fail("aborted", 1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with speaking_flags():  # the library's messages name options as flags
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors and --help: click's own, handled in main
        except AdaptError as error:
            fail(one_line(error))
        except OSError as error:
            if error.errno not in USER_OS_ERRORS:
                errors.print(REPORT)
                raise
            where = f": {error.filename}" if error.filename else ""
            fail(f"{error.strerror or one_line(error)}{where}")
        except MemoryError:
            fail("out of memory: try a smaller --batch-size, --image-size or model")
        except KeyboardInterrupt:
            command = ctx.meta.get(RESUME_COMMAND)
            errors.print(f"interrupted; files are written whole or not at all. Continue with: {command}" if command
                         else "interrupted; files are written whole or not at all")  # fmt: skip
            sys.exit(130)
        except Exception:
            errors.print(REPORT)
            raise


RESUME_COMMAND = "adapt.resume_command"  # ctx.meta: how to continue the running command after Ctrl-C


def typed_command() -> str:
    """The running command as the user typed it (arguments and options given on the command line), for the
    records an output keeps of how it was made (model cards)."""
    import shlex

    ctx = click.get_current_context()
    words = ["adapt", ctx.info_name or ""]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        values = list(value) if isinstance(value, (tuple, list)) else [value]
        if isinstance(param, click.Argument):
            words += [str(v) for v in values]
        elif isinstance(param, click.Option) and param.is_flag:
            words.append(param.opts[0])
        else:
            words += [str(x) for v in values for x in (param.opts[0], v)]
    return shlex.join(words)


def resume_command(command: str) -> None:
    """Say, for Ctrl-C, how to continue the running command (AdaptGroup.invoke prints it)."""
    click.get_current_context().meta[RESUME_COMMAND] = command


RESUME_FREE = {*RESULT_FREE, "out", "resume", "overwrite", "config"}  # may differ on --resume: they change no result


def resolve_config(ctx: click.Context, config: str | None, saved: str | None = None,
                   preset: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """The command's options: its defaults, under a paper's preset ((name, values), adapt.presets), under a
    saved run's config (`saved`, on --resume), under a YAML file (`config`), under the flags typed on the
    command line. YAML keys are the long option names. Every
    value goes through the option's own click type, so a file cannot skip a check the command line makes.
    On resume, a typed flag that would change the run's results is refused, naming each."""
    from adapt.config import read_yaml_mapping, refuse_unknown

    params = {p.name: p for p in ctx.command.params if p.name}
    values = dict(ctx.params)
    typed = {name for name in values if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    layers = [(path, _aliased(read_yaml_mapping(Path(path)), params, path)) for path in (saved, config) if path is not None]
    if preset is not None:
        layers.insert(0, (f"preset {preset[0]}", _aliased(dict(preset[1]), params, f"preset {preset[0]}")))
    def cast(name: str, raw: Any, path: str) -> Any:
        param = params[name]
        several = param.multiple or param.nargs != 1
        if isinstance(raw, dict) and param.multiple and param.metavar == "KEY=VALUE":  # method_options: {rank: 4}
            raw = [f"{key}={json.dumps(value)}" for key, value in raw.items()]
        nested = isinstance(raw, list) and any(isinstance(v, (list, dict)) for v in raw)
        if isinstance(raw, dict) or nested or (isinstance(raw, list) and not several):
            takes = f"a list of {_value_words(param.type)}s" if several else f"one {_value_words(param.type)}"
            raise AdaptError(f"{_source(path)}: {name} takes {takes}, got a {'mapping' if isinstance(raw, dict) else 'list'} "
                             f"{str(raw)[:60]}")  # fmt: skip
        if isinstance(raw, bool) and not (isinstance(param, click.Option) and param.is_flag):
            raise AdaptError(f"{_source(path)}: {name} takes one {_value_words(param.type)}, got {str(raw).lower()} "
                             "(YAML reads true/false/yes/no as booleans)")  # fmt: skip
        if several and not isinstance(raw, list) and raw is not None:
            raw = [raw]  # one value where several may go (`option: rank=4`)
        try:
            return param.type_cast_value(ctx, tuple(raw) if isinstance(raw, list) else raw)
        except click.BadParameter as error:
            message = error.format_message()
            raise AdaptError(f"{_source(path)}: {message if len(message) <= 200 else message[:200] + ' …'}") from None

    for path, layer in layers:
        aliases = [alias for alias, name in CONFIG_ALIASES.items() if name in params]  # for "did you mean"
        refuse_unknown(layer, [n for n in params if n != "config"] + aliases, _source(path))
        for name, raw in layer.items():
            if name not in typed:
                values[name] = cast(name, raw, path)
    if saved is not None:
        before = {name: cast(name, raw, saved) for name, raw in layers[int(preset is not None)][1].items()}
        asked = typed | {name for _, layer in layers[int(preset is not None) + 1 :] for name in layer}  # flags, --config
        changed = [f"--{n.replace('_', '-')} (was {before[n]!r}, now {values[n]!r})" for n in sorted(asked)
                   if n not in RESUME_FREE and n in before and before[n] != values[n] and not _extends(n, before, values)]  # fmt: skip
        if changed:
            raise AdaptError(f"cannot resume with other settings: {', '.join(changed)}; drop them, or start a new run")
    return values


def _extends(name: str, before: dict[str, Any], now: dict[str, Any]) -> bool:
    """More epochs than the saved run planned: a resumption may extend a run (its schedule is re-planned)."""
    return name == "epochs" and isinstance(before[name], int) and isinstance(now[name], int) and now[name] > before[name]


def _source(path: str) -> str:
    """A configuration layer in messages: a config file, or a preset."""
    return path if path.startswith("preset ") else f"config {path}"


def preset_layer(command: str, name: str | None, task: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """(name, values) of the preset `name` for `command` (for one VTAB-1k task: with that task's values); an
    empty name is refused like any other unknown one."""
    if name is None:
        return None
    from adapt.presets import get_preset

    return name, get_preset(name, command).values_for(task)


def preset_overrides(ctx: click.Context, config: str | None, layer: tuple[str, dict[str, Any]] | None,
                     where: str = "") -> str | None:  # fmt: skip
    """The line a command prints when a flag or the --config file sets one of the preset's options instead
    (`where`: e.g. " (svhn)"); None when it does not."""
    from adapt.config import read_yaml_mapping

    if layer is None:
        return None
    params = {p.name: p for p in ctx.command.params if p.name}
    given = set(_aliased(read_yaml_mapping(Path(config)), params, config)) if config else set()
    given |= {n for n in params if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE}
    overridden = [params[n].opts[0] for n in _aliased(layer[1], params, layer[0]) if n in given]  # as typed: --from
    return f"preset {layer[0]}{where}: yours instead of the preset's for {', '.join(overridden)}" if overridden else None


# config keys users bring from Hugging Face's TrainingArguments (and --option's own name), as our options
CONFIG_ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
                  "warmup_ratio": "warmup", "gradient_accumulation_steps": "grad_accum", "output_dir": "out",
                  "gradient_checkpointing": "grad_checkpointing",
                  "option": "method_options", "learner_option": "learner_options", "from": "source"}  # fmt: skip


def _aliased(layer: dict[str, Any], params: dict[str, click.Parameter], path: str) -> dict[str, Any]:
    """A config file's keys with CONFIG_ALIASES read as the options they stand for (where the command has it)."""
    named: dict[str, Any] = {}
    given: dict[str, str] = {}  # option -> the key that set it
    for key, value in layer.items():
        name = CONFIG_ALIASES[key] if CONFIG_ALIASES.get(key) in params else key
        if name in named:
            raise AdaptError(f"config {path}: '{given[name]}' and '{key}' set the same option; keep one")
        named[name], given[name] = value, key
    return named


class RequiredOption(click.Option):
    """An option a command needs that may also come from its --config file (click's own `required`
    would refuse the command before the file is read); config_option checks it once the file is in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["help"] = f"{kwargs.get('help', '')} [required, here or in --config]".strip()
        super().__init__(*args, **kwargs)


def _value_words(kind: click.ParamType) -> str:
    """A click type in a user's words: a number, a whole number, a choice, a path, a value."""
    if isinstance(kind, (click.types.IntParamType, click.IntRange)):
        return "whole number"
    if isinstance(kind, (click.types.FloatParamType, click.FloatRange)):
        return "number"
    if isinstance(kind, click.Choice):
        return f"choice of {', '.join(map(str, kind.choices))}"
    return "path" if isinstance(kind, click.Path) else "value"


def config_option(command):
    """Give a command `--config FILE`: YAML values under the flags typed on the command line (resolve_config).
    The resolved options, for the run to keep, are then `resolved_record()`."""

    @click.option("--config", type=click.Path(dir_okay=False), default=None,
                  help="YAML with any of these options (long names); flags on the command line win.")  # fmt: skip
    @click.pass_context
    @functools.wraps(command)
    def with_config(ctx: click.Context, **params: Any) -> Any:
        values = resolve_config(ctx, params.get("config"))
        saved = Path(str(values.get("out"))) / CONFIG_FILE if values.get("resume") else None
        saved = str(saved) if saved is not None and saved.is_file() else None  # --resume: the run's own options
        layer = preset_layer(ctx.info_name or "", values.get("preset"))
        if saved is not None or layer is not None:
            values = resolve_config(ctx, params.get("config"), saved, layer)
        overridden = preset_overrides(ctx, params.get("config"), layer)
        if overridden:
            console.print(overridden)
        for param in ctx.command.params:
            if isinstance(param, RequiredOption) and values.get(param.name) is None:
                raise click.MissingParameter(ctx=ctx, param=param)
        ctx.meta[_RECORD] = config_record(values)
        values.pop("config", None)
        values.pop("preset", None)  # applied above; the record keeps its name
        return command(**values)

    return with_config


_RECORD = "adapt.resolved_options"


def resolved_record() -> dict[str, Any]:
    """The options of the running command (under config_option) as its run folder keeps them."""
    return click.get_current_context().meta[_RECORD]


def plain_value(value: Any) -> Any:
    """An option's value as YAML/JSON holds it: paths as strings, several values as a list."""
    if isinstance(value, tuple):
        return [plain_value(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def config_record(values: dict[str, Any]) -> dict[str, Any]:
    """The resolved options as plain YAML values (what a run folder keeps in config.yaml)."""
    return {name: plain_value(value) for name, value in values.items() if name not in ("config", "resume", "overwrite")}


def option_value(raw: str) -> Any:
    """A method option's value as typed: JSON when it parses (8, 0.5, true, [..]), a number Python reads
    (nan, inf: refused later by name), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def parse_options(pairs: tuple[str, ...], flag: str = "--option") -> dict[str, Any]:
    """`--option key=value` pairs (values through `option_value`)."""
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise AdaptError(f"{flag} expects key=value, got {pair!r}")
        options[key] = option_value(raw)
    return options


class OptionValue(click.ParamType):
    """A method option's value: typed on the command line (see `option_value`), as it is in a YAML file."""

    name = "value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return option_value(value) if isinstance(value, str) else value


def method_flag_options(command):
    """The methods' declared flags (adapt.methods.METHOD_FLAGS), each a shortcut for --option NAME=VALUE;
    the method's options dataclass checks the value."""
    from adapt.methods import METHOD_FLAGS

    for name, flag in reversed(METHOD_FLAGS.items()):
        help_text = f"{', '.join(flag.methods)}: {flag.help}"
        command = click.option(f"--{name.replace('_', '-')}", name, type=OptionValue(), default=None, metavar="VALUE",
                               help=help_text)(command)  # fmt: skip
    return command


@click.group(cls=AdaptGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="adapt-vision")
def cli() -> None:
    """Parameter-efficient adaptation of frozen pretrained vision backbones.

    \b
    Start with:  adapt tune            (SSF on the embedded EfficientNet-Lite0 and digits)
    """


backbone_option = click.option(
    "--backbone", default="tf_efficientnet_lite0", show_default=True,
    help="A timm model name, local-dir:DIR (a hub folder) or hf-hub:ORG/NAME (from the local cache).",
)  # fmt: skip
weights_option = click.option(
    "--weights", default=None,
    help="Backbone weights: a .safetensors/.pth file, a hub folder, or 'random'. "
         "Default: embedded for Lite0, a hub folder's own; other names must say.",
)  # fmt: skip
precision_option = click.option(
    "--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
    help="Default: accelerate's (accelerate config / launch --mixed_precision / ACCELERATE_MIXED_PRECISION), "
         "else fp32. fp16 needs a GPU.",
)  # fmt: skip
workers_option = click.option("--workers", type=click.IntRange(0), default=0, show_default=True, help="Data loader processes.")
log_with_option = click.option(
    "--log-with", default=None, metavar="TRACKERS",
    help="tensorboard, csv, wandb or all (comma-separated): per-step loss and lr, per-epoch metrics, "
         "into OUT/tensorboard/, OUT/log.csv, or W&B (per task folder in a continual run).",
)  # fmt: skip


def described(descriptions: dict[str, str], title: str) -> Table:
    """Names and descriptions in two columns, wrapped at word boundaries to the terminal's width."""
    grid = Table.grid(padding=(0, 1))
    grid.title, grid.title_justify = title, "left"
    grid.add_column(no_wrap=True)
    grid.add_column()
    for name, text in descriptions.items():
        grid.add_row(f"  {name}", text)
    return grid


def shown_path(text: str) -> str:
    """A path as the user would have typed it: relative to the working folder when it lies inside it."""
    try:
        return str(Path(text).relative_to(Path.cwd())) if Path(text).is_absolute() else text
    except ValueError:
        return text
