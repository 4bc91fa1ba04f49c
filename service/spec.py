"""Job specs: load from YAML/JSON (with --set overrides), check their structure, serialize.

A job file is the `JobSpec` message in protobuf's JSON mapping (field names in camelCase or
snake_case, enum values by name), so YAML, JSON and the wire share one schema. Every error is an
`InvalidSpec` naming the field path (`layers[1].units`), the value received and what is allowed.
Defaults are filled by service/spec_defaults.py, and ranges checked by service/spec_validation.py.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gradfleet.v1 import coordinator_pb2 as pb
from service.errors import InvalidSpec

UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_INT_RANGES = {
    FieldDescriptor.CPPTYPE_UINT32: (0, UINT32_MAX),
    FieldDescriptor.CPPTYPE_UINT64: (0, _UINT64_MAX),
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
}


# ---------------------------------------------------------------------------------------------
# Loading


def load_spec_file(path: str | Path, *, overrides: Sequence[str] = ()) -> pb.JobSpec:
    """Read a .yaml/.yml or .json job file; `overrides` ("a.b=value") are applied before parsing."""
    data = apply_overrides(_read_document(Path(path)), overrides)
    return spec_from_dict(data)


def spec_from_dict(data: Any) -> pb.JobSpec:
    """Convert a mapping in protobuf's JSON mapping to a JobSpec; raises InvalidSpec with a path."""
    if not isinstance(data, dict):
        raise InvalidSpec("", f"a job spec must be a mapping of fields, got {_type_name(data)}")
    _check_depth(data, "the job spec")
    _check_message(data, pb.JobSpec.DESCRIPTOR, pb.JobSpec, "")
    try:
        return json_format.ParseDict(data, pb.JobSpec())
    except json_format.ParseError as exc:  # the walk above should have caught it; stay readable
        raise InvalidSpec("", _strip_parse_error(str(exc))) from None


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """Set "a.b.c=value" keys in a spec mapping; value is parsed as YAML (numbers, names, lists).
    List items are named by index either way: `layers[0].units` (as error messages write field
    paths) or `layers.0.units`."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidSpec("", f"--set {item!r}: expected key=value, e.g. epochs=3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw  # not YAML: take it as a plain string
        except RecursionError:
            raise InvalidSpec("", f"--set {key.strip()}: {_TOO_DEEP}") from None
        _check_depth(value, f"--set {key.strip()}")
        name = key.strip()
        data = _set_path(data if isinstance(data, dict) else {}, _override_keys(name), value, name, [])
    return data


def _read_document(path: Path) -> Any:
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise InvalidSpec("", f"{path}: unknown file type; use a .yaml, .yml or .json job file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidSpec("", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSpec("", f"{path}: cannot read: {exc}") from None
    try:
        data = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_yaml(path, text)
    except RecursionError:  # the parsers recurse once per level of nesting
        raise InvalidSpec("", f"{path}: {_TOO_DEEP}") from None
    _check_depth(data, str(path))
    if data is None:
        raise InvalidSpec("", f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise InvalidSpec("", f"{path}: must hold a mapping of JobSpec fields, not {_type_name(data)}")
    return data


# Levels of lists and mappings: a JobSpec needs 4 (optimizer.schedule.milestones[0]); the checks that
# walk a document recurse once per level, so a deeper one is refused before anything walks it.
MAX_SPEC_DEPTH = 32
_TOO_DEEP = (
    f"nested too deeply (more than {MAX_SPEC_DEPTH} levels of lists and mappings); a job spec needs at most 4"
)


def _check_depth(data: Any, where: str) -> None:
    """InvalidSpec naming `where` if `data` nests lists and mappings more than MAX_SPEC_DEPTH deep;
    walks without recursion, so any depth is safe to check."""
    level: list[Any] = [data]
    for _ in range(MAX_SPEC_DEPTH + 1):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ())
        ]
        if not level:
            return
    raise InvalidSpec("", f"{where}: {_TOO_DEEP}")


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidSpec("", f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise InvalidSpec("", f"{path}:{line}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidSpec("", f"{path}: invalid YAML: {exc}") from None


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML silently lets the last one win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# An override key: fields joined by dots, each optionally followed by list indexes, `[N]` or `.N`.
_OVERRIDE_KEY = re.compile(r"[A-Za-z_]\w*(\[\d+\])*(\.([A-Za-z_]\w*|\d+)(\[\d+\])*)*")
_KEY_PART = re.compile(r"\[(\d+)\]|\.?(\d+)(?=\.|\[|$)|\.?([A-Za-z_]\w*)")
_MISSING = object()  # a key the document does not have yet


def _override_keys(key: str) -> list[str | int]:
    """`layers[0].units` (or `layers.0.units`) as ["layers", 0, "units"]; InvalidSpec if malformed."""
    if not _OVERRIDE_KEY.fullmatch(key):
        raise InvalidSpec(
            "",
            f"--set {key}: malformed key; join field names with dots and name list items by index "
            "from 0, e.g. layers[0].units=32 or layers.0.units=32",
        )
    parts: list[str | int] = []
    for index, number, name in _KEY_PART.findall(key):
        parts.append(int(index or number) if (index or number) else name)
    return parts


def _set_path(data: Any, keys: list[str | int], value: Any, key: str, done: list[str | int]) -> Any:
    """Set `keys` under `data` (what the path `done` holds); errors name the user's `key`."""
    if not keys:
        return value
    head, rest = keys[0], keys[1:]
    where = _key_text(done)
    if isinstance(head, int):
        if not isinstance(data, list):
            what = "is not in the file" if data is _MISSING else f"is {_show(data)}, not a list"
            raise InvalidSpec("", f"--set {key}: {where} {what}, so it has no item {head}")
        if head >= len(data):
            count = f"{len(data)} item{'' if len(data) == 1 else 's'}"
            raise InvalidSpec("", f"--set {key}: index {head} is out of range ({where} has {count})")
        data[head] = _set_path(data[head], rest, value, key, [*done, head])
        return data
    if data is _MISSING:
        data = {}
    if not isinstance(data, dict):
        hint = f"; name an item by index, e.g. {where}[0].{head}" if isinstance(data, list) else ""
        raise InvalidSpec("", f"--set {key}: {where} is {_show(data)}, so it has no field {head}{hint}")
    # Replace an existing key spelled the other way (learningRate vs learning_rate).
    existing = next((k for k in data if _norm(k) == _norm(head)), head)
    data[existing] = _set_path(data.get(existing, _MISSING), rest, value, key, [*done, head])
    return data


def _key_text(keys: list[str | int]) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")


def _norm(key: Any) -> str:
    return str(key).replace("_", "").lower()


# ---------------------------------------------------------------------------------------------
# Structure check: walks the mapping next to the descriptor so every error knows its exact path.


def _check_message(data: Any, desc: Descriptor, cls: type[Message], path: str) -> None:
    if not isinstance(data, dict):
        fields = ", ".join(f.name for f in desc.fields)
        raise InvalidSpec(path, f"got {_show(data)}; must be a mapping with fields {fields}")
    by_key = {f.name: f for f in desc.fields} | {f.json_name: f for f in desc.fields}
    seen: dict[str, str] = {}
    for key, value in data.items():
        field = by_key.get(key)
        if field is None:
            raise InvalidSpec(_join(path, str(key)), _unknown_field(str(key), desc))
        if field.name in seen:
            raise InvalidSpec(_join(path, field.name), f"given twice, as {seen[field.name]} and {key}")
        seen[field.name] = str(key)
        _check_field(field, key, value, cls, _join(path, field.name))


def _check_field(field: FieldDescriptor, key: str, value: Any, cls: type, path: str) -> None:
    if value is None:
        return  # JSON null means "not set"
    if field.is_repeated:
        if not isinstance(value, list):
            raise InvalidSpec(path, f"got {_show(value)}; must be a list")
        for i, item in enumerate(value):
            _check_single(field, key, item, cls, f"{path}[{i}]", as_list=True)
    else:
        _check_single(field, key, value, cls, path, as_list=False)


def _check_single(
    field: FieldDescriptor, key: str, value: Any, cls: type, path: str, *, as_list: bool
) -> None:
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        _check_message(value, field.message_type, GetMessageClass(field.message_type), path)
        return
    if isinstance(value, bool) and field.cpp_type != FieldDescriptor.CPPTYPE_BOOL:
        raise InvalidSpec(path, f"got {_show(value)}; {_expectation(field)}")
    try:
        json_format.ParseDict({key: [value] if as_list else value}, cls())
    except json_format.ParseError:
        if field.enum_type is not None:
            raise InvalidSpec(path, _enum_problem(value, field.enum_type)) from None
        raise InvalidSpec(path, f"got {_show(value)}; {_expectation(field, value)}") from None


def _expectation(field: FieldDescriptor, value: object = None) -> str:
    if field.cpp_type in _INT_RANGES:
        # The storage type's bounds only: the field's own range is checked after parsing, so
        # name a bound only where the value really is beyond it.
        low, high = _INT_RANGES[field.cpp_type]
        if isinstance(value, int) and value < low:
            return "must not be negative" if low == 0 else f"must be at least {low}"
        if isinstance(value, int) and value > high:
            return f"is far too large (the field holds at most {high})"
        return "must be a whole number"
    if field.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return "must be a number"
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return "must be true or false"
    if field.enum_type is not None:
        return f"must be one of {enum_names(field.enum_type)}"
    return "must be a string (quote it)"


def _enum_problem(value: Any, enum: EnumDescriptor) -> str:
    problem = f"{_show(value)} is not one of {enum_names(enum)}"
    if isinstance(value, str) and value.upper() in enum.values_by_name:
        problem += f' (names are upper case: "{value.upper()}")'
    return problem


def _unknown_field(key: str, desc: Descriptor) -> str:
    names = [f.name for f in desc.fields]
    close = difflib.get_close_matches(key, names + [f.json_name for f in desc.fields], n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"unknown field; {hint}{desc.name} has {', '.join(names)}"


def enum_names(enum: EnumDescriptor) -> str:
    """The names of the enum's values but the unset one (number 0), as error messages list them."""
    return ", ".join(v.name for v in enum.values if v.number != 0)


def _strip_parse_error(text: str) -> str:
    while text.startswith("Failed to parse ") and ": " in text:
        text = text.split(": ", 1)[1]
    return text.rstrip(".")


# ---------------------------------------------------------------------------------------------
# Serialization and small helpers


def spec_to_dict(spec: pb.JobSpec) -> dict:
    """The spec in protobuf's JSON mapping (camelCase keys, enum names); loads back identically."""
    return json_format.MessageToDict(spec)


def spec_to_json(spec: pb.JobSpec) -> str:
    return json_format.MessageToJson(spec, indent=2)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string"}.get(type(value), type(value).__name__)
