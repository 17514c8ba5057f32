"""Building configs from YAML files and dotted CLI overrides, saving them, and the recipe CLI."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lcray.config.sections import LcrayConfig
from lcray.config.validation import ConfigError, validate
from lcray.utils.fs import atomic_write_text


# ----------------------------------------------------------------------------- building
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    return "mapping" if dataclasses.is_dataclass(tp) else getattr(tp, "__name__", str(tp))


_SCI_RE = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*$")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the type hint `tp`; return it (int/"5e-7" -> float, "true" -> True)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return config_from_dict(tp, value, key)
    if origin is Literal:
        if any(type(value) is type(c) and value == c for c in args):
            return value
        raise ConfigError(
            f"{key}: must be one of {', '.join(map(str, args))}, got {value!r}{_did_you_mean(value, args)}", key=key
        )
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms:
            try:
                return _coerce(arm, value, key)
            except ConfigError:
                if len(arms) == 1:
                    raise
    elif origin is list and isinstance(value, (list, tuple)):
        return [_coerce(args[0] if args else Any, v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is bool and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    elif tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    elif tp is float and isinstance(value, str) and _SCI_RE.match(value):
        return float(value)  # PyYAML (YAML 1.1) reads 5e-7 as a string
    elif (
        origin is None
        and isinstance(tp, type)
        and isinstance(value, tp)
        and not (tp is not bool and isinstance(value, bool))
    ):  # True is an int in Python; not here
        return value
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {text}", key=key)


def _did_you_mean(word: Any, choices: Sequence[Any], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


# Keys that moved to another section: their old name gets the new one in the error.
MOVED_KEYS = {
    "solopo.num_eval_prompts": "eval.num_prompts",
    "solopo.eval_max_new_tokens": "eval.max_new_tokens",
}


def _unknown_key(cls: type, name: Any, prefix: str) -> ConfigError:
    dot = f"{prefix}." if prefix else ""
    moved = MOVED_KEYS.get(f"{dot}{name}")
    if moved:
        return ConfigError(f"'{dot}{name}' moved to '{moved}'", key=f"{dot}{name}")
    hint = _did_you_mean(name, [f.name for f in dataclasses.fields(cls)], dot)
    return ConfigError(f"unknown key '{dot}{name}'{hint}", key=f"{dot}{name}")


def config_from_dict(cls: type, data: Mapping[str, Any], path_prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested mapping, checking keys and types recursively.

    Missing keys keep their defaults; errors name the full dotted key (under path_prefix).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{path_prefix or 'config'}: expected a mapping, got {type(data).__name__}", key=path_prefix or None
        )
    hints, kwargs = _hints(cls), {}
    for name, value in data.items():
        if name not in {f.name for f in dataclasses.fields(cls) if f.init}:
            raise _unknown_key(cls, name, path_prefix)
        kwargs[name] = _coerce(hints[name], value, f"{path_prefix}.{name}" if path_prefix else name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (deep copy) of a config, ready for YAML or logging."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write `cfg` as YAML atomically (temp file in the same folder, then rename)."""
    return atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


# ----------------------------------------------------------------------------- loading
_OVERRIDE_RE = re.compile(r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*=(.*)$", re.S)


def _merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


def _leaves(data: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        keys.extend(_leaves(v, full) if isinstance(v, Mapping) and v else [full])
    return keys


def parse_override(text: str, cls: type = LcrayConfig) -> tuple[str, Any]:
    """'learner.zero_stage=3' -> ('learner.zero_stage', 3); values are parsed as YAML."""
    m = _OVERRIDE_RE.match(text)
    if not m:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. learner.zero_stage=3)")
    key, raw = m.group(1), m.group(2).strip()
    tp: Any = cls
    for i, part in enumerate(parts := key.split(".")):  # find the field's type; unknown keys fail here
        prefix = ".".join(parts[:i])
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {text!r}: unknown key '{key}' ('{prefix}' is not a section)", key=key)
        if part not in {f.name for f in dataclasses.fields(tp)}:
            raise ConfigError(f"override {text!r}: {_unknown_key(tp, part, prefix)}", key=key)
        tp = _hints(tp)[part]
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text (the type check reports it if a string is wrong here)
    if (tp is str or str in typing.get_args(tp)) and isinstance(value, (bool, int, float)):
        value = raw  # ckpt.path=2024 or model.name_or_path=yes stay strings
    return key, value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *, cls: type = LcrayConfig) -> Any:
    """Defaults <- YAML file at `path` <- dotted `overrides` (in order), then validate() (LcrayConfig)."""
    merged: dict = to_dict(cls())
    sources: dict[str, str] = {}  # dotted key -> where its value came from (for validation errors)

    def apply(update: Mapping, source: str) -> None:
        nonlocal merged
        candidate = _merge(merged, update)
        try:
            config_from_dict(cls, candidate)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}", key=e.key) from None
        merged = candidate
        sources.update(dict.fromkeys(_leaves(update), source))

    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, (Mapping, type(None))):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
        apply(data or {}, str(path))
    for text in [overrides] if isinstance(overrides, str) else overrides:
        key, value = parse_override(text, cls)
        for part in reversed(key.split(".")):
            value = {part: value}
        apply(value, f"override {text!r}")
    cfg = config_from_dict(cls, merged)
    try:
        if isinstance(cfg, LcrayConfig):  # range and cross-field rules exist for LcrayConfig only
            validate(cfg)
    except ConfigError as e:
        source = sources.get(e.key or "")
        raise (ConfigError(f"{source}: {e}", key=e.key) if source else e) from None
    return cfg


# ----------------------------------------------------------------------------- CLI
def add_config_args(
    parser: argparse.ArgumentParser, default_config: str | Path | None = None, *, cls: type = LcrayConfig
) -> argparse.ArgumentParser:
    """Add `--config PATH` and positional `key=value` overrides (and a key list in --help)."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None if default_config is None else str(default_config),
        help=f"YAML config file (default: {default_config or 'built-in defaults'})",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied after the file, e.g. learner.zero_stage=3 "
        "algo.solo_ra.alpha=1 'rollout.stop=[\"\\n\"]' (values are YAML)",
    )
    sections = [
        textwrap.fill(
            ", ".join(_leaves(sub)), 88, initial_indent=f"  {name}: ", subsequent_indent=" " * (len(name) + 4)
        )
        for name, sub in to_dict(cls()).items()
        if isinstance(sub, dict)
    ]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ((parser.epilog or "") + "\n\nconfig keys:\n" + "\n".join(sections)).lstrip("\n")
    return parser


def parse_cli(
    argv: Sequence[str] | None = None,
    default_config: str | Path | None = None,
    *,
    description: str | None = None,
    cls: type = LcrayConfig,
) -> Any:
    """Parse `[--config PATH] [key=value ...]` into a validated config; bad input exits with code 2."""
    parser = add_config_args(argparse.ArgumentParser(description=description), default_config, cls=cls)
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.overrides, cls=cls)
    except ConfigError as e:
        parser.error(str(e))
