"""Render docs/spec.md from the spec models' docstrings (the same text as `sciscale schema`)."""

from __future__ import annotations

import re
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from orchestrator.spec import JobSpec
from models import model_spec_classes


def _key(members: list) -> str | None:
    """The discriminator of a keyed section (optim: name, schedule: kind), or None."""
    return next((k for k in ("name", "kind") if len(members) > 1 and all(k in m.model_fields for m in members)), None)


def _tag(member, key: str) -> str:
    return typing.get_args(member.model_fields[key].annotation)[0]


def _type_name(annotation) -> str:
    members = _models(annotation)
    key = _key(members)
    if key:
        return f"one of {', '.join(_tag(m, key) for m in members)} (keyed on `{key}`)"
    text = str(annotation).replace("typing.", "").replace("NoneType", "null")
    for name in ("orchestrator.spec.", "data.spec.", "<class '", "'>"):
        text = text.replace(name, "")
    return text.replace("|", "\\|")


def _models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found.extend(_models(arg))
    return found


def _default(field) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
        return f"`{value.model_dump() if isinstance(value, BaseModel) else value}`"
    if field.default is PydanticUndefined:
        return "**required**"
    return f"`{field.default}`"


def _section(path: str, model: type[BaseModel], seen: set, out: list[str]) -> None:
    if model in seen:
        return
    seen.add(model)
    out += [f"## `{path}` ({model.__name__})", "", (model.__doc__ or "").strip(), "",
            "| field | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        desc = " ".join((field.description or "").split()).replace("|", "\\|")
        out.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        members = _models(field.annotation)
        key = _key(members)
        plain = re.sub(r" \([^)]*\)", "", path)  # a keyed member's heading names its tag; its fields do not
        where = f"{plain}.{name}" if plain else name
        nested += [(f"{where} ({key} {_tag(m, key)})" if key else where, m) for m in members]
    out.append("")
    for sub_path, sub in nested:
        _section(sub_path, sub, seen, out)


def render_spec_doc() -> str:
    out = ["# Job spec reference", "",
           "Generated from the spec models by `python -m orchestrator.specdoc > docs/spec.md` (a unit test "
           "checks it is current). `sciscale schema` prints the same as JSON Schema.", ""]
    seen: set = set()
    _section("", JobSpec, seen, out)
    for cls in model_spec_classes():
        _section(f"model (family {cls.model_fields['family'].annotation.__args__[0]})", cls, seen, out)
    return "\n".join(out).replace("## `` (JobSpec)", "## top level (JobSpec)") + "\n"


if __name__ == "__main__":
    print(render_spec_doc(), end="")
