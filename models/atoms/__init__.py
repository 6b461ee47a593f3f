"""Interatomic potentials: EScAIP (written here) and the MACE baseline (mace-torch)."""

from __future__ import annotations

import torch

from models.atoms.batch import AtomsTransform, collate, example_batch
from models.atoms.config import AtomsModelSpec, atomic_number
from models.atoms.loss import loss, metrics
from models.atoms.neighbors import mean_neighbor_count
from models.atoms.plots import plots
from models.atoms import evaluate
from models.family import EvalSuite, Family


def build_model(spec: AtomsModelSpec) -> torch.nn.Module:
    """EScAIP or MACE; explicit reference energies from the spec are set here, fitted ones in
    :func:`prepare_model`."""
    if spec.arch == "mace":
        from models.atoms.mace_model import MaceModel  # mace-torch is only needed for the baseline

        model = MaceModel(spec)
    else:
        from models.atoms.escaip import EScAIP

        model = EScAIP(spec)
        if spec.mup is not None:
            from models.mup import parametrize

            model = parametrize(model, spec, EScAIP)
    if isinstance(spec.reference_energies, dict):
        set_reference_energies(model, spec, spec.reference_energies, "model.reference_energies")
    return model


def set_reference_energies(model: torch.nn.Module, spec: AtomsModelSpec, refs: dict[str, float], where: str) -> None:
    """Write {symbol: eV} into the model's per-element reference energies (a buffer, saved with weights)."""
    table = torch.zeros(spec.max_atomic_number + 1, dtype=torch.float64)
    for symbol, value in refs.items():
        z = atomic_number(symbol, where)
        if z >= len(table):
            raise ValueError(f"{where}: element {symbol} (Z={z}) exceeds model.max_atomic_number "
                             f"{spec.max_atomic_number}; raise model.max_atomic_number")
        table[z] = float(value)
    model.set_reference_energies(table)


def manifest_attrs(manifest) -> dict:
    """The manifest's attrs whether it is an object or a plain dict."""
    attrs = getattr(manifest, "attrs", None)
    if attrs is None and isinstance(manifest, dict):
        attrs = manifest.get("attrs")
    return dict(attrs or {})


def prepare_model(model: torch.nn.Module, spec: AtomsModelSpec, manifest) -> None:
    """Set what the model takes from the training data: the fitted per-element reference energies
    (``reference_energies: fit``) and, for MACE with ``mace_avg_num_neighbors: null``, the mean neighbour
    count at ``model.cutoff``. The trainer calls this once after ``build_model`` on the training manifest."""
    attrs = manifest_attrs(manifest)
    if spec.arch == "mace" and spec.mace_avg_num_neighbors is None:
        model.set_avg_num_neighbors(measured_avg_num_neighbors(attrs, spec.cutoff))
    if spec.reference_energies != "fit":
        return
    refs = attrs.get("reference_energies")
    if refs is None:
        raise ValueError("model.reference_energies is 'fit' but the training manifest has no attrs."
                         "reference_energies; hint: write the dataset with sciscale data generate emt / "
                         "data convert extxyz|ase-db (they fit them), or give {symbol: eV} in the spec")
    set_reference_energies(model, spec, refs, "manifest attrs.reference_energies")


def measured_avg_num_neighbors(attrs: dict, cutoff: float) -> float:
    """MACE's avg_num_neighbors (mean edges per atom at ``cutoff``) from the manifest's ``neighbor_counts``."""
    counts = attrs.get("neighbor_counts")
    if not counts:
        raise ValueError("model.mace_avg_num_neighbors is null (measure it from the data), but the training "
                         "manifest has no attrs.neighbor_counts; hint: regenerate or convert the dataset with "
                         "this version (sciscale data generate emt / data convert extxyz|ase-db write it), or "
                         "set model.mace_avg_num_neighbors")
    return mean_neighbor_count(counts, cutoff, "model.cutoff vs the training manifest's neighbor_counts")


def make_transform(spec: AtomsModelSpec, manifest) -> AtomsTransform:
    """Neighbour list per structure in the DataLoader worker (vesin)."""
    from models.atoms.preflight import check
    from models.family import raise_mismatches

    raise_mismatches(check(spec, "val", manifest))  # the driver's preflight ran the same check (train rules too)
    mean_atoms = manifest_attrs(manifest).get("mean_atoms")
    return AtomsTransform(spec.cutoff, spec.max_neighbors, float(mean_atoms) if mean_atoms else None)


FAMILY = Family(
    name="atoms",
    build_model=build_model,
    make_transform=make_transform,
    collate=collate,
    loss=loss,
    metrics=metrics,
    example_batch=example_batch,
    median_metrics=("force_mae_mev_a",),
    plots=plots,
    prepare_model=prepare_model,
    eval_suite=EvalSuite(make_transform=make_transform, evaluate=evaluate.evaluate),
    # MACE is never split: Accelerate cannot place mace-torch's buffers, and its load_state_dict hook (the
    # normalisation constants) would not run
    # Muon: the input projections of raw geometric features (EScAIP's radial and bond-order inputs, MACE's
    # first radial-MLP layer) take AdamW with the embeddings; MACE's e3nn weights are flat vectors (AdamW)
    muon_adamw=("edge_in", "boo_in", "conv_tp_weights.layer0"),
    no_split=("NeighborBlock", "MaceModel"),
)
