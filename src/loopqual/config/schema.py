"""Strict schemas for loopqual's data files and results files (pydantic, host side only: the
guest never imports this module), and one line of explanation for a value that does not fit:
the key, the value given and the type expected ("ten" is not a number, "A=1" is not a table,
"x" is not a list; nothing is converted silently)."""

from __future__ import annotations

import json
import typing

from pydantic import BaseModel, ConfigDict, ValidationError


class Entry(BaseModel):
    """An entry of a data file: every key known, every value of its type."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


EXPECTED = {
    "string_type": "a string (in quotes)",
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": 'a list, e.g. ["a", "b"]',
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
    # an unknown key (often a misspelt one) explains a missing one: name it first
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
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
    key = "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else str(k))
                  for i, k in enumerate(keys))
    if first["type"] == "extra_forbidden":
        table = _model_at(model, keys[:-1]) or model
        allowed = ", ".join(sorted(f.alias or n for n, f in table.model_fields.items()))
        hint = f" ({HINTS[keys[-1]]})" if keys and keys[-1] in HINTS else ""
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
