"""The main job: train one configuration and evaluate it every epoch.

    python -m experiments.train \
        --config=experiments/configs/fashion_mnist.py:mlp_predsim \
        --workdir=runs/mlp_predsim --config.epochs=5

Writes WORKDIR/metrics.jsonl (one JSON object per epoch), WORKDIR/summary.json and Orbax
checkpoints in WORKDIR/checkpoints/; rerunning with a workdir that holds a checkpoint
resumes it. Uses every device; for N hosts add, on host i,

    --config.coordinator_address=host0:1234 --config.num_processes=N --config.process_id=i

(or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID). bfloat16 compute:
--config.dtype=bfloat16. See README.md, "At scale", and docs/scaling.md.
"""

import difflib
import os
import re
import sys
import types

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, optionally with ':row' (see experiments/configs/).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])

# the command-line form of config fields whose form is not obvious from their value
_FIELD_FORMS = {
    "milestones": "a tuple of epochs after which lr is multiplied by lr_decay, e.g. "
    "--config.milestones='(100,150)' (or '()' for none)",
}


def _fail(message: str) -> None:
    """Prints `error: message` as one line on stderr and exits with status 1."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(1)


def _config_arg(argv: list[str]) -> str | None:
    """The value of --config=FILE[:ROW] (or --config FILE[:ROW]), if given."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _overrides(argv: list[str]) -> list[str]:
    """The field paths of the --config.FIELD[=VALUE] (and --noconfig.FIELD) flags."""
    names = []
    for arg in argv:
        match = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
        if match:
            names.append(match.group(1))
    return names


def _config_fields(config_arg: str | None) -> list[str]:
    """The fields of the config the command line names (default.py's if it cannot load)."""
    try:
        config = config_flags.ConfigFileFlagParser("config").parse(config_arg)
        return sorted(config.keys())
    except Exception:  # noqa: BLE001 -- only a hint; the default fields will do
        from experiments.configs import default

        return sorted(default.get_config().keys())


def _unknown_field_message(error: Exception, argv: list[str]) -> str | None:
    """One line for a config override naming no field, or a config file without
    get_config; None when `error` is neither (a bug: it keeps its traceback)."""
    config_arg = _config_arg(argv)
    path = config_arg.split(":", 1)[0] if config_arg else None
    if (
        isinstance(error, AttributeError)
        and getattr(error, "name", None) == "get_config"
        and isinstance(getattr(error, "obj", None), types.ModuleType)
    ):
        return (
            f"config file {path} defines no get_config(); a config file must define "
            "get_config() (or get_config(row) for --config=FILE:ROW) returning an "
            "ml_collections.ConfigDict, as experiments/configs/default.py does."
        )
    fields = _config_fields(config_arg)
    for name in _overrides(argv):
        top = name.split(".", 1)[0]
        unknown = f"unknown config field {top!r} in --config.{name}"
        if top not in fields:
            close = difflib.get_close_matches(top, fields, n=1)
            if close:
                return f"{unknown}; did you mean --config.{close[0]}?"
            return f"{unknown}; fields are {fields}."
        if "." in name:
            return f"config field {top!r} has no sub-fields: use --config.{top}=VALUE."
    return None


def _flag_error_message(error: flags.Error, argv: list[str]) -> str:
    """One line for a flag absl or the config loader refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
    flag = re.match(r"flag (\S+?): ", lines[0])
    if flag is None or len(lines) == 1:
        field = re.match(r"flag --config\.(\w+)=", lines[0])
        if field and field.group(1) in _FIELD_FORMS:
            name = field.group(1)
            value = next(
                (a.split("=", 1)[1] for a in argv if a.startswith(f"--config.{name}=")), "?"
            )
            return f"--config.{name}={value} is not {_FIELD_FORMS[name]}."
        if re.match(r"flag --config=.*must have a value other than None", lines[0]):
            path = (_config_arg(argv) or "").split(":", 1)[0]
            return (
                f"config file {path}: get_config() returned None; it must return an "
                "ml_collections.ConfigDict (is its return statement missing?)."
            )
        return f"{lines[0]} (see --helpshort)"
    # the config loader's traceback follows; its last line is the cause
    cause = re.sub(r"^\w+(Error|Exception): ", "", lines[-1])
    return f"{flag.group(1)}: {cause}"


def _syntax_error_message(error: SyntaxError, argv: list[str]) -> str:
    """One line for a config file (or a file it imports) that does not parse."""
    path = (_config_arg(argv) or "").split(":", 1)[0]
    where = error.filename or path
    if path and os.path.abspath(where) != os.path.abspath(path):
        where = f"{where} (imported by config file {path})"
    else:
        where = f"config file {where}"
    text = f" near `{error.text.strip()}`" if error.text and error.text.strip() else ""
    return f"{where} has a syntax error at line {error.lineno}: {error.msg}{text}."


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config mistakes reported in one line, not a traceback.

    ml_collections reports a missing config file only when the config is first read, an
    error inside the config file as a flag error carrying the whole loader traceback, a
    syntax error as itself, and an override of a field the config lacks (or a config
    file without get_config) as a bare KeyError/AttributeError. Anything else raised
    while loading a config file (an ImportError, a bug in get_config) keeps its traceback.
    """
    config_arg = _config_arg(argv)
    path = config_arg.split(":", 1)[0] if config_arg else None
    if path and not os.path.isfile(path):
        _fail(
            f"config file not found: {path}. Config files are in experiments/configs/, "
            "e.g. --config=experiments/configs/fashion_mnist.py:mlp_predsim."
        )
    logging.set_verbosity(logging.ERROR)  # the config loader's warnings repeat our errors
    try:
        return flags.FLAGS(argv)
    except SyntaxError as e:
        _fail(_syntax_error_message(e, argv))
    except flags.Error as e:
        _fail(_flag_error_message(e, argv))
    except (AttributeError, KeyError) as e:
        message = _unknown_field_message(e, argv)
        if message is None:
            raise
        _fail(message)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    # imported here, so that a mistake on the command line is reported without loading jax
    from localjax.errors import ConfigError, DatasetError, TrainingError
    from localjax.training import loop

    try:
        loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, DatasetError, TrainingError) as e:
        _fail(str(e))  # a message the user can act on; any other exception is a bug


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
