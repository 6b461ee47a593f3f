"""The ``model`` section of a PDE job spec (torch-free: the orchestrator imports it to validate specs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.family import MupSpec

_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

# Named sizes per architecture; scOT sizes follow Poseidon (T/B/L) plus a ~2.5B "XL" and a CPU "debug".
SCOT_SIZES: dict[str, dict] = {
    "debug": {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (3, 6, 12, 24), "patch_size": 4,
              "window_size": 8, "skip_blocks": (1, 1, 1, 0)},
    "T": {"embed_dim": 48, "depths": (4, 4, 4, 4), "num_heads": (3, 6, 12, 24), "patch_size": 4,
          "window_size": 16, "skip_blocks": (2, 2, 2, 0)},
    "B": {"embed_dim": 96, "depths": (8, 8, 8, 8), "num_heads": (3, 6, 12, 24), "patch_size": 4,
          "window_size": 16, "skip_blocks": (2, 2, 2, 0)},
    "L": {"embed_dim": 192, "depths": (8, 8, 8, 8), "num_heads": (3, 6, 12, 24), "patch_size": 4,
          "window_size": 16, "skip_blocks": (2, 2, 2, 0)},
    # ~2.5B: twice L's width (parameters grow with width squared); 48 heads keeps head dim 8 at stage 0.
    "XL": {"embed_dim": 384, "depths": (8, 8, 8, 8), "num_heads": (6, 12, 24, 48), "patch_size": 4,
           "window_size": 16, "skip_blocks": (2, 2, 2, 0)},
}
FNO_SIZES: dict[str, dict] = {
    "debug": {"modes": 8, "hidden_channels": 32, "n_layers": 4},
    "T": {"modes": 16, "hidden_channels": 64, "n_layers": 4},
    "B": {"modes": 32, "hidden_channels": 128, "n_layers": 4},
    "L": {"modes": 32, "hidden_channels": 256, "n_layers": 6},
}


class PdeModelSpec(BaseModel):
    """A neural operator that maps a field at time t to the field at t + lead_time."""

    model_config = _CONFIG

    family: Literal["pde"]
    """Model family discriminator."""
    arch: Literal["fno", "scot"] = "scot"
    """Architecture: ``scot`` (Poseidon's U-shaped Swin V2 operator) or ``fno`` (neuraloperator's FNO)."""
    size: Literal["debug", "T", "B", "L", "XL"] = "debug"
    """Named size. scOT: debug (CPU), T 20.8M, B 157.7M, L 628.6M, XL ~2.5B. FNO: debug, T, B, L."""
    in_channels: int = Field(ge=1)
    """Physical channels of the input field (must match the dataset's channel count)."""
    out_channels: int | None = Field(default=None, ge=1)
    """Channels of the predicted field (default: ``in_channels``)."""
    resolution: int = Field(default=128, ge=8)
    """Spatial size H = W of the fields (the Swin window layout depends on it)."""
    channel_groups: list[int] | None = None
    """Sizes of consecutive output-channel groups for the relative L1 loss, e.g. [1, 2, 1] for
    (rho, velocity, p); default: one group per channel."""
    residual: bool = True
    """Predict the change from the input (output = input[:out_channels] + network); the outputs must be the
    first out_channels input channels (extra inputs are e.g. coefficient fields)."""
    window_size: int | None = Field(default=None, ge=2)
    """scOT only: override the named size's attention window (tokens per side)."""
    width: int | None = Field(default=None, ge=2)
    """Override the named size's hidden width (FNO: hidden_channels; scOT: embed_dim, a multiple of the first
    stage's heads), e.g. to sweep model size in a scaling ladder."""
    mup: MupSpec | None = None
    """scOT only: muP against the same model at ``mup.base_width`` (docs/optimizers.md); null: standard."""
    time_stride: int = Field(default=2, ge=1)
    """Keep every k-th stored snapshot; all pairs i <= j of kept snapshots are training samples."""
    max_time_index: int | None = Field(default=None, ge=1)
    """Last snapshot index kept (default: the last one stored)."""
    lead_time_scale: float | None = Field(default=None, gt=0)
    """Divide lead times by this before feeding them to the model (default: each trajectory's time span,
    so the longest lead time is 1)."""
    activation_checkpointing: bool = False
    """Recompute block activations in the backward pass (scOT: each Swin/ConvNeXt stage) to save memory."""

    @property
    def no_muon_reason(self) -> str | None:
        """Why ``optim.name: muon`` cannot train this model, or None (the family's rule: models/pde/__init__.py)."""
        if self.arch == "fno":
            return ("model.arch fno has no 2-D weight matrix for Muon: its channel mixing is 1x1 convolution kernels "
                    "and its spectral weights are complex, both of which take AdamW")
        return None

    @property
    def out_ch(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def groups(self) -> list[int]:
        return list(self.channel_groups) if self.channel_groups else [1] * self.out_ch

    @model_validator(mode="after")
    def _check(self) -> "PdeModelSpec":
        if self.arch == "fno" and self.size not in FNO_SIZES:
            raise ValueError(f"model.size {self.size!r} is not defined for model.arch 'fno'; "
                             f"use one of {sorted(FNO_SIZES)}")
        if self.residual and self.out_ch > self.in_channels:
            raise ValueError(f"model.residual needs model.out_channels <= model.in_channels, got "
                             f"{self.out_ch} > {self.in_channels}; set residual: false")
        if self.channel_groups is not None and (sum(self.channel_groups) != self.out_ch
                                                or min(self.channel_groups) < 1):
            raise ValueError(f"model.channel_groups {self.channel_groups} must be positive sizes summing to "
                             f"model.out_channels ({self.out_ch})")
        if self.mup is not None and self.arch != "scot":
            raise ValueError(f"model.mup is implemented for model.arch scot only (got {self.arch!r}): FNO's "
                             "spectral weights need a rule of their own. Hint: remove model.mup")
        if self.arch == "scot":
            heads = SCOT_SIZES[self.size]["num_heads"][0]
            for field, value in (("width", self.width), ("mup.base_width", self.mup and self.mup.base_width)):
                if value is not None and value % heads:
                    raise ValueError(f"model.{field} {value} must be a multiple of {heads} for scOT size "
                                     f"{self.size!r} (its first stage has {heads} attention heads)")
            patch = SCOT_SIZES[self.size]["patch_size"]
            if self.resolution % (patch * 8):
                raise ValueError(f"model.resolution {self.resolution} must be a multiple of {patch * 8} for "
                                 f"scOT (patch {patch}, three patch merges); e.g. 32, 64 or 128")
        return self


MODEL_SPEC = PdeModelSpec
