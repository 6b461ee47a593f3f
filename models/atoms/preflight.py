"""Does an atoms spec fit a structure dataset? Torch-free: the driver runs it before anything starts.

Reads the attrs that the atoms converters and the EMT generator write (data/converters/_atoms.py): elements,
max_atomic_number, labels (frames with each label), reference_energies and neighbor_counts. Datasets written
before an attr existed skip the check that needs it.
"""

from __future__ import annotations

from models.family import Mismatch

_FIELDS = ("positions", "numbers", "forces", "cell", "pbc", "energy")


def check(spec, split: str, manifest) -> list[Mismatch]:
    """Fields, elements, labels and data-derived constants of ``manifest`` against the spec."""
    missing = [k for k in _FIELDS if k not in manifest.fields]
    if missing:
        return [Mismatch("model.family", "atoms", f"fields {sorted(manifest.fields)} (no {', '.join(missing)})",
                         "train the family that fits this dataset, or write structures with `sciscale data "
                         "convert extxyz|ase-db` or `sciscale data generate emt`")]
    attrs = dict(manifest.attrs or {})
    out = _elements(spec, attrs) + _labels(spec, split, attrs)
    if split == "train":
        out += _constants(spec, attrs)
    return out


def _elements(spec, attrs: dict) -> list[Mismatch]:
    out, present = [], list(attrs.get("elements") or [])
    top = attrs.get("max_atomic_number")
    if top is not None and int(top) > spec.max_atomic_number:
        out.append(Mismatch("model.max_atomic_number", spec.max_atomic_number, f"atomic numbers up to {top}",
                            f"set model.max_atomic_number: {top}"))
    if spec.arch == "mace" and present:
        unknown = [e for e in present if e not in (spec.elements or [])]
        if unknown:
            out.append(Mismatch("model.elements", spec.elements, f"elements {present} ({unknown} not in the "
                                "spec)", f"set model.elements: [{', '.join(sorted(set(spec.elements) | set(present)))}]"))
    refs = spec.reference_energies
    if isinstance(refs, dict) and present and [e for e in present if e not in refs]:
        out.append(Mismatch("model.reference_energies", refs, f"elements {present}",
                            f"give a reference energy for {[e for e in present if e not in refs]}, or use 'fit'"))
    return out


def _labels(spec, split: str, attrs: dict) -> list[Mismatch]:
    labels = attrs.get("labels")
    if not labels:
        return []
    out = []
    weights = {"energy": spec.energy_weight, "forces": spec.force_weight,
               "stress": spec.stress_weight if spec.stress else 0.0}
    for label, weight in weights.items():
        if split == "train" and weight > 0 and int(labels.get(label, 0)) == 0:
            field = {"forces": "model.force_weight"}.get(label, f"model.{label}_weight")
            out.append(Mismatch(field, weight, f"no {label} label in any of its frames (labels {labels})",
                                f"set {field}: 0" + (" or model.stress: false" if label == "stress" else "")
                                + ", or convert data that carries the label (--" + label + "-key)"))
    return out


def _constants(spec, attrs: dict) -> list[Mismatch]:
    out = []
    if spec.reference_energies == "fit" and "reference_energies" not in attrs:
        out.append(Mismatch("model.reference_energies", "fit", "no fitted reference_energies attr",
                            "rewrite the dataset with `sciscale data convert extxyz|ase-db` / `data generate emt` "
                            "(they fit them), or give {symbol: eV} in the spec"))
    if spec.arch == "mace" and spec.mace_avg_num_neighbors is None:
        counts = attrs.get("neighbor_counts")
        if not counts:
            out.append(Mismatch("model.mace_avg_num_neighbors", None, "no neighbor_counts attr to measure it from",
                                "rewrite the dataset with a sciscale converter, or set model.mace_avg_num_neighbors"))
        elif spec.cutoff > float(counts.get("max_radius", 0)):
            out.append(Mismatch("model.cutoff", spec.cutoff, f"neighbour counts up to {counts['max_radius']} A",
                                "lower model.cutoff or set model.mace_avg_num_neighbors"))
    return out
