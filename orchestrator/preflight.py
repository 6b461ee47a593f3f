"""Check a spec against its data before anything starts: every train and val manifest is read (a few KB each)
and the model family says whether spec and data fit (models.check_data). Torch-free and Ray-free: a mismatch
is the one-screen spec error within seconds, not a traceback from every worker after Ray has started."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from orchestrator.spec import JobSpec
from orchestrator.specload import SpecError, local_path_of


def datasets(spec: JobSpec) -> list[tuple[str, str, str]]:
    """(split, field path, url) of every dataset the spec names."""
    return [(split, f"data.{split}[{i}].url", s.url) for split in ("train", "val")
            for i, s in enumerate(getattr(spec.data, split))]


def read_manifests(spec: JobSpec, entries: list[tuple[str, str, str]]) -> tuple[dict, list]:
    """{url: Manifest} of the readable ones, and (path, url, message) problems of the others."""
    from data.format import read_manifest
    from data.storage import storage_options

    def read(entry):
        _, where, url = entry
        try:
            return url, read_manifest(url, storage_options(url, spec.storage)), None
        except ValueError as exc:  # the storage layer explains every failure as a ValueError
            return url, None, (where, url, str(exc))

    with ThreadPoolExecutor(min(8, max(1, len(entries)))) as pool:
        results = list(pool.map(read, entries))
    return {url: m for url, m, _ in results if m is not None}, [p for _, _, p in results if p]


def check(spec: JobSpec, source: str, unreachable_ok: bool = False) -> list[str]:
    """Raise SpecError when the spec does not fit its data. With ``unreachable_ok`` (sciscale validate),
    datasets that cannot be read are skipped and returned as notes instead."""
    from models import check_data

    entries = datasets(spec)
    manifests, unread = read_manifests(spec, entries)
    problems = [] if unreachable_ok else list(unread)
    for split, where, url in entries:
        manifest = manifests.get(url)
        if manifest is None:
            continue
        problems += _field_problems(spec, where, url, manifest)
        problems += [(m.field, m.spec_value, m.message()) for m in
                     check_data(spec.model, split, url, manifest, where)]
    if problems:
        raise SpecError(f"{source} against its data", problems)
    notes = [f"{where}: not checked against the data ({msg.splitlines()[0]})" for where, _, msg in unread]
    return notes + _check_init_from(spec, source, unreachable_ok)


def _check_init_from(spec: JobSpec, source: str, unreachable_ok: bool) -> list[str]:
    """A registered model as init_from (models:/NAME@ALIAS) must exist and hold weights. A tracking store this
    machine cannot reach is a note with ``unreachable_ok`` (the cluster job checks it again)."""
    if not (spec.train.init_from or "").startswith("models:/"):
        return []
    from mlflow.exceptions import MlflowException

    from orchestrator.registry import SourceError, check_init_from
    from orchestrator.runs import tracking_uri

    try:
        check_init_from(spec, tracking_uri(spec))
    except SourceError as exc:
        message = f"{exc.what}\n    expected: {exc.expected}\n    hint: {exc.hint}"
        raise SpecError(source, [("train.init_from", spec.train.init_from, message)]) from None
    except MlflowException as exc:
        if not unreachable_ok:
            raise
        return [f"train.init_from: not checked ({str(exc).splitlines()[0][:200]})"]
    return []


def _field_problems(spec: JobSpec, where: str, url: str, manifest) -> list:
    wanted = spec.data.fields or []
    absent = [f for f in wanted if f not in manifest.fields]
    if absent:
        return [("data.fields", wanted, f"the dataset {url} has no field {absent}; it has {sorted(manifest.fields)}"
                 "\n    fix: correct data.fields, or point data at a dataset with those fields")]
    return []


def cluster_paths(spec: JobSpec, source: str) -> None:
    """For `launch --cluster` and `render kuberay`: a local data or runs-root path that no node of the cluster
    has is refused (object storage, or a directory every node mounts, listed in storage.shared_paths)."""
    shared = [local_path_of(p).resolve() for p in spec.storage.shared_paths]
    named = [(where, url) for _, where, url in datasets(spec)] + [("storage.runs_root", spec.storage.runs_root)]
    problems = []
    for where, url in named:
        path = local_path_of(url)
        path = path.resolve() if path is not None else None
        if path is not None and not any(path == s or s in path.parents for s in shared):
            problems.append((where, url, "a local path, which no pod or other node of the cluster has\n    fix: "
                             "put it in object storage (s3://bucket/...), or, if every node mounts it at this "
                             "path, list the directory in storage.shared_paths"))
    if problems:
        raise SpecError(f"{source} for a cluster", problems)

