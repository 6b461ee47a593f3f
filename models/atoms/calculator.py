"""An ASE calculator around a trained sciscale potential (EScAIP or MACE).

Load it from any SOURCE ``sciscale eval`` takes (a run id, a checkpoint directory, an MLflow model URI; with
``max_memory`` split across devices by Accelerate) with :meth:`SciscaleCalculator.from_source`, from a
``weights.safetensors`` file plus the spec (a job spec YAML or its ``model`` section), or from an MLflow URI: a
run's weights (``runs:/RUN_ID``) or the logged PyTorch model (``models:/NAME/VERSION``, ``runs:/RUN_ID/model``).
Neighbour lists are built per call with vesin.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from models.atoms.batch import AtomsTransform, collate


def load_model_spec(path_or_dict):
    """AtomsModelSpec from a job spec YAML (its ``model`` section), a model-section YAML, or a dict."""
    import yaml

    from models.atoms.config import AtomsModelSpec

    data = path_or_dict
    if not isinstance(data, dict):
        with open(path_or_dict) as f:
            data = yaml.safe_load(f)
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    if not isinstance(data, dict) or data.get("family") != "atoms":
        raise ValueError(f"{path_or_dict}: not an atoms model spec (expected family: atoms in the model "
                         "section); hint: pass the run's resolved spec.yaml")
    return AtomsModelSpec.model_validate(data)


class SciscaleCalculator(Calculator):
    """Energy (eV), forces (eV/A) and stress (eV/A^3, Voigt) from a sciscale interatomic model."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: torch.nn.Module, *, dtype: torch.dtype = torch.float64, device: str = "cpu", **kwargs):
        super().__init__(**kwargs)
        # a model split by Accelerate stays where it was placed (its dtype was set when it was loaded) and its
        # hooks move the batch to each part's device; moving it would raise
        split = len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1
        self.model = (model if split else model.to(device=device, dtype=dtype)).eval()
        self.dtype, self.device = dtype, device
        self.transform = AtomsTransform(model.cutoff, model.max_neighbors)
        self._warned = False

    @classmethod
    def from_source(cls, source, *, runs_root: str = "runs", max_memory: dict | None = None,
                    offload_dir: str | None = None, storage=None, **kwargs) -> "SciscaleCalculator":
        """From a trainers.sources.ModelSource or a SOURCE string (run id, checkpoint directory, MLflow model
        URI, resolved against ``runs_root``), loaded by trainers.inference.load_model (``max_memory``:
        Accelerate's device map; MACE models are never split)."""
        from trainers.inference import load_model
        from trainers.sources import ModelSource, resolve

        if not isinstance(source, ModelSource):
            source = resolve(source, runs_root=runs_root, storage=storage)
        if source.spec.model.family != "atoms":
            raise ValueError(f"{source.label} is a {source.spec.model.family} model; the ASE calculator needs an "
                             "atoms model (EScAIP or MACE). Hint: check SOURCE")
        dtype, device = kwargs.get("dtype", torch.float64), kwargs.get("device", "cpu")
        model = load_model(source, device=device, max_memory=max_memory, offload_dir=offload_dir, dtype=dtype)
        return cls(model, **kwargs)

    @classmethod
    def from_checkpoint(cls, weights: str, spec, **kwargs) -> "SciscaleCalculator":
        """From a weights.safetensors file and the spec (YAML path or dict) it was trained with."""
        from safetensors.torch import load_file

        from models.atoms import build_model

        model = build_model(load_model_spec(spec))
        model.load_state_dict(load_file(weights))
        return cls(model, **kwargs)

    @classmethod
    def from_mlflow(cls, uri: str, **kwargs) -> "SciscaleCalculator":
        """From ``runs:/RUN_ID`` (weights.safetensors + spec.yaml artifacts) or an MLflow PyTorch model URI."""
        import mlflow

        if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:
            weights = mlflow.artifacts.download_artifacts(f"{uri.rstrip('/')}/weights.safetensors")
            spec = mlflow.artifacts.download_artifacts(f"{uri.rstrip('/')}/spec.yaml")
            return cls.from_checkpoint(weights, spec, **kwargs)
        import mace  # noqa: F401  (a pickled MACE model needs mace imported before e3nn)

        return cls(mlflow.pytorch.load_model(uri, map_location="cpu"), **kwargs)

    def _batch(self, atoms) -> dict:
        sample = {"positions": atoms.get_positions(), "numbers": atoms.get_atomic_numbers(),
                  "cell": np.asarray(atoms.get_cell()), "pbc": atoms.get_pbc(), "energy": np.float64(0.0),
                  "forces": np.zeros((len(atoms), 3))}
        example = self.transform(sample)
        if example["truncated"] and not self._warned:
            self._warned = True
            warnings.warn(f"some atoms have more than max_neighbors={self.model.max_neighbors} neighbours within "
                          f"{self.model.cutoff} A; the farthest are dropped and the energy is not smooth there",
                          stacklevel=3)
        example["positions"] = np.asarray(atoms.get_positions(), dtype=np.float64)
        example["cell"] = np.asarray(atoms.get_cell(), dtype=np.float64)
        batch = collate([example])
        return {k: (v.to(self.dtype) if v.is_floating_point() else v).to(self.device) for k, v in batch.items()}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = self.model(self._batch(self.atoms))
        energy = float(out["energy"][0])
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": out["forces"].detach().cpu().numpy().astype(np.float64)}
        if "stress" in out and self.atoms.cell.rank == 3:
            s = out["stress"][0].detach().cpu().numpy().astype(np.float64)
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
