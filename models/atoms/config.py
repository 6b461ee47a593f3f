"""The ``model`` section of an interatomic-potential job spec (torch-free: the orchestrator imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.family import MupSpec

_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

# EScAIP sizes: H512L10 and H1024L8 follow the EScAIP paper's configurations; "1B" widens to 2048 so
# that parameters (about 20 x width^2 per layer) reach ~1e9 at 12 layers.
ESCAIP_SIZES: dict[str, dict] = {
    # debug: edge tokens dominate the cost on CPU, so a narrow width and a 2x feed-forward
    "debug": {"hidden": 32, "layers": 2, "heads": 2, "num_rbf": 16, "boo_lmax": 4, "ffn": 2},
    "H512L10": {"hidden": 512, "layers": 10, "heads": 8, "num_rbf": 64, "boo_lmax": 8, "ffn": 4},
    "H1024L8": {"hidden": 1024, "layers": 8, "heads": 16, "num_rbf": 64, "boo_lmax": 8, "ffn": 4},
    "1B": {"hidden": 2048, "layers": 12, "heads": 16, "num_rbf": 128, "boo_lmax": 8, "ffn": 4},
}
# MACE sizes: "medium" is MACE-MP's 128x0e+128x1o (4.69M parameters with 89 elements).
MACE_SIZES: dict[str, dict] = {
    "debug": {"hidden_irreps": "16x0e+16x1o", "num_interactions": 2, "correlation": 2, "max_ell": 2,
              "mlp_irreps": "16x0e", "num_bessel": 8},
    "medium": {"hidden_irreps": "128x0e+128x1o", "num_interactions": 2, "correlation": 3, "max_ell": 3,
               "mlp_irreps": "16x0e", "num_bessel": 8},
}
ELEMENTS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm"
).split()
"""Chemical symbols indexed by atomic number (index 0 is a placeholder)."""


def atomic_number(symbol: str, where: str) -> int:
    """Atomic number of ``symbol``; a ValueError naming ``where`` if it is not an element."""
    if symbol not in ELEMENTS[1:]:
        raise ValueError(f"{where}: {symbol!r} is not a chemical symbol; expected e.g. 'Cu', 'Al', 'O'")
    return ELEMENTS.index(symbol)


class AtomsModelSpec(BaseModel):
    """A machine-learned interatomic potential: energy, forces and stress of a structure."""

    model_config = _CONFIG

    family: Literal["atoms"]
    """Model family discriminator."""
    arch: Literal["escaip", "mace"] = "escaip"
    """Architecture: ``escaip`` (attention over neighbours, scalar features) or ``mace`` (mace-torch)."""
    size: Literal["debug", "H512L10", "H1024L8", "1B", "medium"] = "debug"
    """Named size. EScAIP: debug (CPU), H512L10 (53.5M parameters), H1024L8 (171M), 1B (1.02B). MACE: debug,
    medium (128x0e+128x1o)."""
    cutoff: float = Field(default=6.0, gt=0, le=20)
    """Neighbour cutoff radius in Angstrom."""
    max_neighbors: int = Field(default=30, ge=1)
    """Neighbours kept per atom (the nearest). Energy is smooth only if this covers every neighbour inside
    the cutoff; the calculator warns when atoms lose neighbours to the cap."""
    forces: Literal["conservative", "direct"] = "conservative"
    """``conservative``: forces = -dE/dx (energy-conserving MD, double backward in training); ``direct``:
    a force head (faster, not a gradient field). MACE is always conservative. ZeRO-3 trains direct forces only
    (its layers do not support the double backward)."""
    stress: bool = True
    """Predict stress (strain derivative for conservative models, a head for direct ones)."""
    max_atomic_number: int = Field(default=100, ge=1, le=118)
    """Largest atomic number the EScAIP embedding table holds."""
    elements: list[str] | None = None
    """Elements the MACE model knows (one-hot table), e.g. [Al, Cu, Ni]; required for arch mace."""
    reference_energies: Literal["fit"] | dict[str, float] = "fit"
    """Per-element reference energies (eV) subtracted before learning: ``fit`` takes the least-squares fit
    that the generator/converter stored in the training manifest; or an explicit {symbol: eV} mapping."""
    energy_weight: float = Field(default=1.0, ge=0)
    """Loss weight of the per-atom energy error."""
    force_weight: float = Field(default=10.0, ge=0)
    """Loss weight of the force error (per Cartesian component, every atom in the batch counts equally)."""
    stress_weight: float = Field(default=1.0, ge=0)
    """Loss weight of the stress error (eV/A^3, 3x3 components); 0 ignores stress labels."""
    loss: Literal["mse", "mae"] = "mse"
    """Error norm of every loss term: squared error or absolute error."""
    mace_avg_num_neighbors: float | None = Field(default=None, gt=0)
    """MACE only: the average number of neighbours within ``cutoff`` that divides MACE's message sums. None:
    measured from the training data at model.cutoff (the manifest's ``neighbor_counts``)."""
    activation_checkpointing: bool = False
    """Recompute each EScAIP layer in the backward pass to save memory."""
    width: int | None = Field(default=None, ge=2)
    """EScAIP only: override the named size's hidden width (a multiple of its attention heads), e.g. to sweep
    model size in a scaling ladder or in a learning-rate transfer study."""
    mup: MupSpec | None = None
    """EScAIP only: muP against the same model at ``mup.base_width`` (docs/optimizers.md); null: standard."""

    @field_validator("reference_energies")
    @classmethod
    def _check_refs(cls, value):
        if isinstance(value, dict):
            for symbol in value:
                atomic_number(symbol, "model.reference_energies")
        return value

    @model_validator(mode="after")
    def _check(self) -> "AtomsModelSpec":
        sizes = ESCAIP_SIZES if self.arch == "escaip" else MACE_SIZES
        if self.size not in sizes:
            raise ValueError(f"model.size {self.size!r} is not defined for model.arch {self.arch!r}; "
                             f"use one of {sorted(sizes)}")
        if self.arch == "mace" and not self.elements:
            raise ValueError("model.arch 'mace' needs model.elements (the one-hot element table), "
                             "e.g. elements: [Al, Cu, Ni]")
        if self.arch == "mace" and self.forces == "direct":
            raise ValueError("model.forces 'direct' is not available for model.arch 'mace' (its forces "
                             "are always -dE/dx); use forces: conservative")
        if self.arch == "mace" and (self.width is not None or self.mup is not None):
            raise ValueError("model.width and model.mup are implemented for model.arch escaip only (MACE's width is "
                             "its irreps, e3nn's own parameterisation). Hint: remove them or use arch: escaip")
        heads = sizes[self.size].get("heads", 1)
        for field, value in (("width", self.width), ("mup.base_width", self.mup and self.mup.base_width)):
            if value is not None and value % heads:
                raise ValueError(f"model.{field} {value} must be a multiple of {heads} for EScAIP size "
                                 f"{self.size!r} (whole attention heads)")
        if self.elements:
            zs = [atomic_number(s, "model.elements") for s in self.elements]
            if max(zs) > self.max_atomic_number:
                raise ValueError(f"model.elements contains atomic number {max(zs)} above "
                                 f"model.max_atomic_number {self.max_atomic_number}; raise max_atomic_number")
        return self

    @property
    def no_bf16_reason(self) -> str | None:
        """Why ``train.precision: bf16`` cannot train this model (with a hint), or None."""
        if self.arch == "mace":
            return ("model.arch mace: e3nn's tensor products mix bf16 and fp32 operands under autocast "
                    "(RuntimeError 'both inputs should have same dtype'), and mace-torch itself trains in fp32 or "
                    "fp64. Hint: use train.precision: fp32")
        return None

    @property
    def no_zero3_reason(self) -> str | None:
        """Why ``distributed.zero_stage: 3`` cannot train this model (with a hint), or None."""
        if self.forces == "conservative":
            return (f"model.forces conservative{' (MACE is always conservative)' if self.arch == 'mace' else ''} "
                    "takes the forces as -dE/dx inside the forward and trains through that gradient (a double "
                    "backward), which DeepSpeed's ZeRO-3 layers do not support (RuntimeError 'mat2 must be a "
                    "matrix' at the first backward, DeepSpeed 0.19.8). Hint: use distributed.zero_stage: 2 "
                    "(gradients and optimizer states still sharded)"
                    + ("" if self.arch == "mace" else " or model.forces: direct"))
        return None

    @property
    def sizes(self) -> dict:
        """Hyper-parameters of the named size (EScAIP: with ``width`` as its hidden width when set)."""
        if self.arch == "mace":
            return MACE_SIZES[self.size]
        return {**ESCAIP_SIZES[self.size], **({"hidden": self.width} if self.width else {})}

    @property
    def atomic_numbers(self) -> list[int]:
        """MACE's element table as atomic numbers (sorted)."""
        return sorted(atomic_number(s, "model.elements") for s in (self.elements or []))


MODEL_SPEC = AtomsModelSpec
