"""Read a YAML job spec, apply ``--set`` overrides, validate, and explain every rejection on one screen."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.spec import TAGGED, UNION_TAGS, JobSpec

SECRET_KEY = re.compile(r"(secret|password|passwd|token|api[_-]?key|access[_-]?key|credential)", re.I)
REDACTED = "***"


class SpecError(ValueError):
    """A spec was rejected; ``problems`` are (field path, received value, message) triples."""

    def __init__(self, source: str, problems: list[tuple[str, Any, str]]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"invalid job spec {self.source}: {len(self.problems)} problem(s)"]
        for path, value, message in self.problems:
            lines.append(f"  {path or '(top level)'}")
            if value is not _MISSING:
                lines.append(f"    received: {_show(path, value)}")
            lines.append(f"    {message}")
        lines.append("Run `sciscale schema` for every field, or see docs/spec.md.")
        return "\n".join(lines)


_MISSING = object()


def _show(path: str, value: Any) -> str:
    if SECRET_KEY.search(path or ""):
        return REDACTED
    text = yaml.safe_dump(redact(value), default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[:-4].strip()
    text = text.removesuffix("...").strip()
    return text if len(text) <= 200 else text[:197] + "..."


def redact(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with every secret-looking key's value replaced by ***."""
    if key and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        raise SpecError(str(path), [("", _MISSING, f"file not found: {p.resolve()}. Hint: check the path; "
                                     "examples live in examples/")])
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(str(path), [("", _MISSING, f"not valid YAML at {where}: "
                                     f"{getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(raw, dict):
        raise SpecError(str(path), [("", raw, "expected a YAML mapping with keys name, model, data, train, ...")])
    return raw


def apply_overrides(raw: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML; list items by index: data.train[0].url=... or
    data.train.0.url=...)."""
    for item in overrides:
        if "=" not in item:
            raise SpecError(source, [(item, _MISSING, "expected --set PATH=VALUE, e.g. train.max_steps=100")])
        path, text = item.split("=", 1)
        keys = [k for k in re.split(r"\.|\[(\d+)\]", path.strip()) if k]  # a.b[0].c as well as a.b.0.c
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        node: Any = raw
        for i, key in enumerate(keys[:-1]):
            node = _child(node, key, keys[: i + 1], source)
        last = keys[-1]
        if isinstance(node, list):
            node[_index(node, last, keys, source)] = value
        else:
            node[last] = value
    return raw


def _child(node: Any, key: str, trail: list[str], source: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, trail, source)]
    if not isinstance(node, dict):
        raise SpecError(source, [(".".join(trail), node, "cannot set a field inside a plain value")])
    return node.setdefault(key, {})


def _index(node: list, key: str, trail: list[str], source: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise SpecError(source, [(".".join(trail), _MISSING, f"list index {key!r} out of range 0..{len(node) - 1}")])
    return int(key)


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None, check_files: bool = True,
              recorded: bool = False) -> JobSpec:
    """Read, override and validate a spec; raise SpecError with every problem found. ``recorded``: the spec a
    run recorded, which an earlier sciscale may have written (:func:`upgrade_recorded`)."""
    raw = read_yaml(path)
    raw = apply_overrides(upgrade_recorded(raw) if recorded else raw, overrides or [])
    spec = absolutize(validate_spec(raw, str(path)))
    if check_files:
        problems = missing_files(spec)
        if problems:
            raise SpecError(str(path), problems)
    return spec


# Fields every optimizer and every schedule carried before ``optim`` and ``optim.schedule`` became tables keyed on
# ``name`` and ``kind``; a run recorded then has them all filled in (dump_spec writes every default).
_SHARED_BEFORE_TABLES = {"name": ("betas", "momentum"), "kind": ("min_lr_ratio",)}


def upgrade_recorded(raw: dict) -> dict:
    """A spec recorded beside a run by an earlier sciscale, in today's shape, so the run resumes: each field of
    :data:`_SHARED_BEFORE_TABLES` is dropped where the chosen optimizer or schedule has none (it had no effect
    there: an AdamW run's momentum, a constant schedule's min_lr_ratio). Anything else is left to validation."""
    optim = raw.get("optim")
    sections = [optim, optim.get("schedule")] if isinstance(optim, dict) else []
    for section, (key, default) in zip(sections, (("name", "adamw"), ("kind", "cosine"))):
        member = TAGGED[key].get(section.get(key, default)) if isinstance(section, dict) else None
        for field in _SHARED_BEFORE_TABLES[key] if member else ():
            if field not in member.model_fields:
                section.pop(field, None)
    return raw


def validate_recorded(raw: dict, source: str) -> JobSpec:
    """Validate a spec that sciscale wrote (beside a run, a checkpoint or a logged model), perhaps an earlier one."""
    return validate_spec(upgrade_recorded(raw), source)


def validate_spec(raw: dict, source: str = "spec") -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(source, [_explain(err, raw) for err in exc.errors()]) from None


def _explain(err: dict, raw: dict) -> tuple[str, Any, str]:
    loc = [p for p in err["loc"] if not _is_union_tag(p)]
    path = _path(loc)
    kind, msg = err["type"], err["msg"]
    value = err.get("input", _MISSING)
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1], raw)
        hint = _did_you_mean(str(loc[-1]), allowed) or _owners(loc, raw)
        return path, value, f"unknown key{hint}; allowed keys here: {', '.join(allowed)}"
    if kind == "missing":
        return path, _MISSING, "required field is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        key = ctx.get("discriminator", "'family'").strip("'")
        tags = re.findall(r"'([^']+)'", ctx.get("expected_tags", ""))
        got = ctx.get("tag", _MISSING)
        hint = _did_you_mean(str(got), tags) if got is not _MISSING else ""
        return _path(loc + [key]), got, f"unknown {_TAG_WHAT.get(key, key)}{hint}; expected one of {', '.join(tags)}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        options = re.findall(r"'([^']+)'", expected) or re.findall(r"\d+", expected)
        hint = _did_you_mean(str(value), options)
        return path, value, f"{msg}{hint}"
    message = msg.removeprefix("Value error, ")
    named = re.match(r"([a-z_]+(?:\.[a-z_0-9]+)+)[= ]", message) if not loc else None
    if named:  # a cross-field rule of the whole spec: shown at the first field its message names
        path = named.group(1)
    if isinstance(value, dict) and kind == "value_error":
        value = _MISSING  # a cross-field rule: the message names the fields; the whole section is noise
    return path, value, message


_TAG_WHAT = {"family": "model family", "name": "optimizer", "kind": "schedule kind"}


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in UNION_TAGS or part in ("int", "WorkersRange")
                                      or part.endswith("ModelSpec"))


def _owners(loc: list, raw: dict) -> str:
    """For a key that belongs to another member of a keyed section (betas under optim.name: sgd): which."""
    section = loc[:-1]
    node: Any = raw
    for part in section:
        node = node[part] if isinstance(node, (dict, list)) and (isinstance(node, dict) and part in node or
                                                               isinstance(node, list) and part < len(node)) else {}
    key = next((k for k in _TAG_WHAT if isinstance(node, dict) and k in node), None)
    members = TAGGED.get(key, {})
    if not any(node.get(key) == tag for tag in members):
        return ""
    owners = [tag for tag, cls in members.items() if str(loc[-1]) in cls.model_fields]
    if not owners:
        return ""
    return f" for {key} {node[key]!r} ({loc[-1]} is a field of {key} {', '.join(owners)})"


def _path(loc: list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed_fields(loc: list, raw: dict) -> list[str]:
    """Field names of the model at ``loc`` (walks JobSpec's annotations, following the model family)."""
    model: Any = JobSpec
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else {}
            continue
        node = node.get(part, {}) if isinstance(node, dict) else {}
        model = _field_model(model, part, node)
        if model is None:
            return []
    return sorted(model.model_fields)


def _field_model(model: Any, name: str, node: Any) -> Any:
    from typing import get_args

    field = model.model_fields.get(name)
    if field is None:
        return None
    candidates = [field.annotation, *get_args(field.annotation)]
    for arg in list(candidates):
        candidates.extend(get_args(arg))
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    for key in _TAG_WHAT:
        if len(models) > 1 and isinstance(node, dict) and key in node:
            models = [m for m in models if m.model_fields.get(key) is not None
                      and node[key] in get_args(m.model_fields[key].annotation)] or models
    return models[0] if models else None


def missing_files(spec: JobSpec) -> list[tuple[str, Any, str]]:
    """Local files the spec names but that do not exist (remote URLs are checked at launch)."""
    problems = []
    for split in ("train", "val"):
        for i, source in enumerate(getattr(spec.data, split)):
            local = local_path_of(source.url)
            if local is not None and not (local / "manifest.json").exists():
                what = "does not exist" if not local.exists() else "has no manifest.json"
                problems.append((f"data.{split}[{i}].url", source.url,
                                 f"local dataset {local} {what}. Hint: generate one with `sciscale data generate` "
                                 "or convert one with `sciscale data convert`"))
    init = spec.train.init_from
    if init and local_path_of(init) is not None and not local_path_of(init).exists():
        problems.append(("train.init_from", init, "file or directory not found"))
    return problems


def absolutize(spec: JobSpec) -> JobSpec:
    """Relative local paths (data URLs, runs root, init_from) are taken from the current directory and made
    absolute, because Ray workers run in directories of their own."""
    for source in [*spec.data.train, *spec.data.val]:
        local = local_path_of(source.url)
        if local is not None and not local.is_absolute():
            source.url = str(local.resolve())
    root = local_path_of(spec.storage.runs_root)
    if root is not None and not root.is_absolute():
        spec.storage.runs_root = str(root.resolve())
    init = spec.train.init_from
    if init and local_path_of(init) is not None and not local_path_of(init).is_absolute():
        spec.train.init_from = str(local_path_of(init).resolve())
    return spec


def local_path_of(url: str) -> Path | None:
    """The local path a data URL, runs root or init_from names, or None for a remote URL."""
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    if "://" in url or url.startswith(("runs:/", "models:/")):
        return None
    return Path(url)


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a resolved spec to MLflow params (dotted keys; secrets redacted)."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(redact(v, str(k)), f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = str(value)
    return out


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec as YAML (every default filled in)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
