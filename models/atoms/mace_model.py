"""The MACE baseline (mace-torch) behind sciscale's batch format, so the same trainer drives it."""

from __future__ import annotations

import mace  # noqa: F401  (must be imported before e3nn: it sets torch.load defaults e3nn relies on)
import numpy as np
import torch
from e3nn import o3
from mace.modules import MACE, interaction_classes
from torch import nn

from models.atoms.config import AtomsModelSpec


class MaceModel(nn.Module):
    """mace-torch's MACE; converts the padded neighbour matrix into MACE's edge list."""

    def __init__(self, spec: AtomsModelSpec):
        super().__init__()
        size, zs = spec.sizes, spec.atomic_numbers
        self.predict_stress = spec.stress
        self.cutoff, self.max_neighbors = spec.cutoff, spec.max_neighbors  # read by the ASE calculator
        table = torch.full((spec.max_atomic_number + 1,), -1, dtype=torch.int64)
        table[torch.tensor(zs)] = torch.arange(len(zs))
        self.register_buffer("z_index", table, persistent=False)
        ambient = torch.get_default_device()
        # e3nn computes normalisation constants numerically while constructing, so MACE is built on the CPU
        # and moved to the meta device afterwards when the caller builds under torch.device("meta")
        with torch.device("cpu"):
            self.mace = self._build_mace(spec, size, zs)
            # saved with the weights, so a model rebuilt from its spec (calculator, export) normalises as trained
            self.register_buffer("avg_num_neighbors", torch.tensor(self._interaction_norm(), dtype=torch.float64))
        if ambient.type == "meta":
            self.mace.to("meta")
            self.avg_num_neighbors = self.avg_num_neighbors.to("meta")
        self.register_load_state_dict_pre_hook(_fill_missing_norm)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_norm())

    @staticmethod
    def _build_mace(spec: AtomsModelSpec, size: dict, zs: list[int]) -> MACE:
        return MACE(
            r_max=spec.cutoff, num_bessel=size["num_bessel"], num_polynomial_cutoff=5, max_ell=size["max_ell"],
            interaction_cls=interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=size["num_interactions"], num_elements=len(zs),
            hidden_irreps=o3.Irreps(size["hidden_irreps"]), MLP_irreps=o3.Irreps(size["mlp_irreps"]),
            # no measured value yet: prepare_model sets it from the training manifest
            atomic_energies=np.zeros(len(zs)), avg_num_neighbors=spec.mace_avg_num_neighbors or 1.0,
            atomic_numbers=zs, correlation=size["correlation"], gate=torch.nn.functional.silu,
        )

    def _interaction_norm(self) -> float:
        return float(self.mace.interactions[0].avg_num_neighbors)

    def set_avg_num_neighbors(self, value: float) -> None:
        """MACE's message normalisation: each interaction block divides its neighbour sum by ``value``."""
        if self.avg_num_neighbors.device.type != "meta":
            self.avg_num_neighbors.fill_(float(value))
        for block in self.mace.interactions:
            block.avg_num_neighbors = float(value)

    def _sync_norm(self) -> None:
        if self.avg_num_neighbors.device.type != "meta":
            self.set_avg_num_neighbors(float(self.avg_num_neighbors))

    def set_reference_energies(self, energies: torch.Tensor) -> None:
        """Per-element energies indexed by atomic number -> MACE's E0s."""
        buf = self.mace.atomic_energies_fn.atomic_energies
        if buf.device.type == "meta":  # shapes only: nothing to set
            return
        zs = torch.nonzero(self.z_index >= 0).squeeze(-1)
        buf.copy_(energies[zs].to(buf.dtype).reshape(buf.shape))

    def _mace_input(self, batch: dict) -> dict:
        idx = self.z_index[batch["numbers"]]
        if (idx < 0).any():
            missing = sorted(set(batch["numbers"][idx < 0].tolist()))
            raise ValueError(f"MACE model: atomic numbers {missing} are not in model.elements; add them to the spec")
        n, k = batch["nbr_idx"].shape
        mask = batch["nbr_mask"]
        sender = torch.arange(n, device=mask.device)[:, None].expand(n, k)[mask]
        unit_shifts = batch["nbr_shift"][mask].to(batch["positions"].dtype)
        shifts = torch.einsum("ec,ecd->ed", unit_shifts, batch["cell"][batch["batch"][sender]])
        ptr = torch.cat([batch["n_atoms"].new_zeros(1), batch["n_atoms"].cumsum(0)])
        return {
            "positions": batch["positions"].detach().clone(), "cell": _with_volume(batch["cell"]),
            "node_attrs": nn.functional.one_hot(idx, len(self.mace.atomic_numbers)).to(batch["positions"].dtype),
            "edge_index": torch.stack([sender, batch["nbr_idx"][mask]]), "unit_shifts": unit_shifts,
            "shifts": shifts, "batch": batch["batch"], "ptr": ptr,
        }

    def forward(self, batch: dict) -> dict:
        with torch.enable_grad():
            out = self.mace(self._mace_input(batch), training=self.training, compute_force=True,
                            compute_stress=self.predict_stress)
        result = {"energy": out["energy"], "forces": out["forces"]}
        if self.predict_stress:
            result["stress"] = out["stress"].view(-1, 3, 3)
        if not self.training:
            result = {k: v.detach() for k, v in result.items()}
        return result


def _with_volume(cell: torch.Tensor) -> torch.Tensor:
    """Zero cells (molecules) become the unit cell. MACE divides the virial by the cell volume and zeroes the
    infinite result with torch.where, whose backward still multiplies by 1/0 = inf: NaN gradients. A
    non-periodic structure has no cell shifts, so the substitute changes only that (unused) stress."""
    flat = torch.linalg.det(cell).abs() < 1e-9
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand_as(cell)
    return torch.where(flat[:, None, None], eye, cell)


def _fill_missing_norm(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                       error_msgs) -> None:
    """Weights saved before the buffer existed keep the spec's value (they were trained with it)."""
    state_dict.setdefault(prefix + "avg_num_neighbors", module.avg_num_neighbors.detach().clone())
