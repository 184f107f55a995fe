"""Strict schemas for loopqual's data files and results files (pydantic, host side only: the
guest never imports this module), and one line of explanation for a value that does not fit:
the key, the value given and the type expected ("ten" is not a number, "A=1" is not a table,
"x" is not a list; nothing is converted silently)."""

from __future__ import annotations

import json
import typing
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class Entry(BaseModel):
    """An entry of a data file: every key known, every value of its type."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Entity(Entry):
    """An entry that loopqual also builds in Python, with positional arguments in field order
    as well (Mirror(url, components))."""
    # attributes the loader sets rather than the file, e.g. the name of [kernel.NAME]
    not_in_file: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *args, **kwargs):
        names = [info.alias or name for name, info in type(self).model_fields.items()]
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional arguments")
        super().__init__(**dict(zip(names[:len(args)], args, strict=True)), **kwargs)

    # model_validate then validates a table without calling __init__ (pydantic's RootModel
    # marks its own __init__ the same way)
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


EXPECTED = {
    "string_type": "a string (in quotes)",
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": 'a list, e.g. ["a", "b"]',
    "tuple_type": 'a list, e.g. ["a", "b"]',
    "dict_type": 'a table, e.g. { NAME = "value" }',
    "model_type": "a table",
    "greater_than": "a number above 0",
    "too_short": "a non-empty list",
}
HINTS = {
    "inherent": 'inherent = true|false became category = "inherent" | "policy" | "pending"',
    "requires": "a profile lists where it does not apply: not_applicable = "
                '[{ when = { exclusive_caps = 0 }, because = "..." }]',
    "not_applicable_because": "a profile lists where it does not apply: not_applicable = "
                              '[{ when = { exclusive_caps = 0 }, because = "..." }]',
}


def shown(value) -> str:
    """A value as TOML would write it ("ten", true, ["a"]), cut short."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def explain(model: type[BaseModel], entry: dict, exc: ValidationError) -> tuple[str, str]:
    """The first problem pydantic found, as (key, what is wrong), e.g. ("timeout_s",
    '= "ten": expected a positive number of seconds'). Also used for results.json."""
    # an unknown key (often a misspelt one) explains a missing one: name it first; a rule a
    # validator checks (a ValueError) comes after every value of a wrong type
    errors = sorted(exc.errors(), key=lambda e: (e["type"] != "extra_forbidden",
                                                 e["type"] == "value_error"))
    first = errors[0]

    def resolve(loc) -> tuple[list, object, bool]:
        """The part of loc that names keys of the input (pydantic adds type tags to a union's
        errors), the value found there, and whether it exists."""
        keys, cur = [], entry
        for part in loc:
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
                cur = cur[part]
            elif keys and first["type"] not in ("missing", "extra_forbidden"):
                return keys, cur, True  # a union's type tag: the value is the one reached
            else:
                keys.append(part)
                return keys, None, False
            keys.append(part)
        return keys, cur, True

    keys, value, found = resolve(first["loc"])
    key = dotted(keys)
    if first["type"] == "extra_forbidden":
        hint = f" ({HINTS[keys[-1]]})" if keys and keys[-1] in HINTS else ""
        allowed = ", ".join(file_keys(_model_at(model, keys[:-1]) or model))
        return key, f"unknown key{hint}; allowed: {allowed}"
    # the field's own description of what it holds, when the problem is the field itself
    inner = _model_at(model, keys[:-1])
    field_info = inner.model_fields.get(keys[-1]) if inner and keys and isinstance(keys[-1], str) else None
    described = field_info.description if field_info is not None else None
    if first["type"] == "missing":
        return key, f"missing; expected {described}" if described else "missing (a required key)"
    if first["type"] == "literal_error":
        expected = first["ctx"]["expected"]
    elif described:
        expected = described
    else:
        same = [e for e in errors if resolve(e["loc"])[0] == keys]
        kinds = list(dict.fromkeys(EXPECTED.get(e["type"], e["msg"]) for e in same))
        expected = " or ".join(kinds)
    return key, (f"= {shown(value)}: " if found else "") + f"expected {expected}"


def file_keys(model: type[BaseModel]) -> list[str]:
    """The keys a table of this model may hold."""
    hidden = getattr(model, "not_in_file", frozenset())
    return sorted(info.alias or name for name, info in model.model_fields.items() if name not in hidden)


def dotted(loc) -> str:
    """A location as the files write it: not_applicable[0].because."""
    return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else str(k))
                   for i, k in enumerate(loc))


def _model_at(model: type[BaseModel], keys: list) -> type[BaseModel] | None:
    """The model that describes the table at keys (through lists and named tables of models),
    or None where keys lead into a plain table or list."""
    named = False  # the key before was a table of models by name: this key is a name
    for k in keys:
        if isinstance(k, int) or named:
            named = False
            continue
        field = model.model_fields.get(k)
        inner = [] if field is None else [a for a in _flatten(field.annotation)
                                          if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
        annotations = (field.annotation, *typing.get_args(field.annotation))
        named = any(typing.get_origin(a) is dict for a in annotations)
    return model


def _flatten(annotation) -> list:
    args = typing.get_args(annotation)
    return [annotation] if not args else [x for a in args for x in _flatten(a)]
