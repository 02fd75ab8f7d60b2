"""Arguments shared by the training commands: --config, --resume and key=value overrides, the config keys
listed in ``--help`` (from the pydantic model), and the nearest key suggested for a typo."""

from __future__ import annotations

import argparse
import difflib
import textwrap
import typing
from pathlib import Path

from vlm_rl.config import ENV_NAMES, C, ConfigError, load_config, read_config_file


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type | None = None) -> None:
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--resume", help="'auto' or a checkpoint path")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. num_steps=10 (or --num_steps 10); keys below")
    if config_cls is not None:
        parser.epilog = config_keys_help(config_cls)


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def config_keys_help(config_cls: type) -> str:
    """One block per config key: ``name (type, default X): description``, from the pydantic model."""
    env = {field: name for name, field in ENV_NAMES.items()}
    lines = [f"config keys of {config_cls.__name__} (YAML, key=value or --key value; "
             "environment names in brackets):"]
    for name, field in config_cls.model_fields.items():
        default = field.default
        head = f"  {name}" + (f" [{env[name]}]" if name in env else "")
        head += f" ({_type_name(field.annotation)}, default {default!r})"
        lines.append(head)
        if field.description:
            lines.extend(textwrap.wrap(field.description, 96, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def unknown_keys(config_cls: type, path: str | None, overrides: list[str]) -> list[str]:
    """'key: unknown; did you mean X?' for each key that is not a field of ``config_cls``."""
    keys: list[tuple[str, str]] = []
    if path and Path(path).is_file():
        try:  # the file's keys and its recipe's (``recipe: PATH``), each named with the file that set it
            _, origin = read_config_file(path)
        except ConfigError:
            origin = {}
        keys += list(origin.items())
    for item in overrides:
        key = item.partition("=")[0].strip().lstrip("-").replace("-", "_").lower()
        keys.append((ENV_NAMES.get(key.upper(), key), "override"))
    fields = list(config_cls.model_fields)
    problems = []
    for key, source in keys:
        if key in fields:
            continue
        close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; see `--help` for the {len(fields)} keys"
        problems.append(f"{key} ({source}): not a {config_cls.__name__} key{hint}")
    return problems


def load_config_with_hints(cls: type[C], path: str | None, overrides: list[str]) -> C:
    """``load_config`` whose error for a mistyped key names the nearest real key."""
    try:
        return load_config(cls, path, overrides)
    except ConfigError as exc:
        problems = unknown_keys(cls, path, overrides)
        if problems:
            raise ConfigError(f"{exc}\n  " + "\n  ".join(problems)) from exc
        raise


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    overrides = list(args.overrides or [])
    if getattr(args, "resume", None):
        overrides.append(f"resume={args.resume}")
    return load_config_with_hints(cls, args.config, overrides)


def _option(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    for spelling in (key, key.replace("_", "-"), key.replace("-", "_")):
        action = parser._option_string_actions.get(f"--{spelling}")
        if action is not None:
            return action
    return None


def normalise_tokens(parser: argparse.ArgumentParser, tokens: list[str]) -> list[str]:
    """Both flag styles for one parser: with a ``key=value`` overrides positional, an unknown ``--key value``
    (or ``--key=value``; a bare ``--flag`` is ``flag=true``) becomes ``key=value``; without one, ``key=value``
    naming an option becomes ``--key value``.
    """
    takes_overrides = any(a.dest == "overrides" for a in parser._actions)
    out, rest = [], list(tokens)
    while rest:
        token = rest.pop(0)
        if token == "--":
            out += [token, *rest]
            break
        if token.startswith("--") and len(token) > 2:
            key, eq, value = token[2:].partition("=")
            if _option(parser, key) is None and takes_overrides:
                if not eq:
                    value = rest.pop(0) if rest and not rest[0].startswith("--") else "true"
                out.append(f"{key.replace('-', '_')}={value}")
                continue
        elif "=" in token and not token.startswith("-") and not takes_overrides:
            key, _, value = token.partition("=")
            action = _option(parser, key)
            if action is not None:
                if action.nargs == 0:  # store_true / store_false
                    if value.strip().lower() in ("1", "true", "yes", "on"):
                        out.append(action.option_strings[0])
                else:
                    out += [action.option_strings[0], value]
                continue
        out.append(token)
    return out
