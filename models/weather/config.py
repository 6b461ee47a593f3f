"""The weather family's spec (torch-free: the orchestrator imports it to validate job specs)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.family import MupSpec

_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

# Named ClimaX sizes: (embed_dim, depth, heads, decoder_depth). "B" is the paper's configuration (1024/8/16,
# about 108M parameters with 48 variables on 32x64); "H" is a Prithvi-WxC-scale model of about 2.5B.
CLIMAX_SIZES: dict[str, tuple[int, int, int, int]] = {
    "debug": (64, 3, 4, 1),
    "B": (1024, 8, 16, 2),
    "H": (2560, 31, 20, 2),
}

# Named SFNO sizes: (embed_dim, num_layers, scale_factor).
SFNO_SIZES: dict[str, tuple[int, int, int]] = {
    "debug": (64, 4, 2),
    "B": (384, 8, 1),
    "H": (1536, 16, 1),
}


class WeatherModelSpec(BaseModel):
    """A global medium-range forecast model on a latitude-longitude grid (ClimaX or SFNO)."""

    model_config = _CONFIG

    family: Literal["weather"] = "weather"
    """Model family discriminator."""
    arch: Literal["climax", "sfno"] = "climax"
    """climax: variable-tokenised ViT (microsoft/ClimaX); sfno: spherical Fourier neural operator baseline."""
    size: Literal["debug", "B", "H"] = "debug"
    """Named size: debug (CPU), B (ClimaX paper, ~108M with 48 variables), H (~2.5B)."""
    variables: list[str] = Field(min_length=1)
    """Pretraining variable vocabulary in WeatherBench2 naming, levels as suffix (geopotential_500,
    2m_temperature). ClimaX learns one patch embedding and one variable embedding per entry."""
    in_variables: list[str] | None = None
    """Variables fed to the model (a subset of ``variables`` when fine-tuning); default: all of ``variables``."""
    out_variables: list[str] | None = None
    """Variables predicted and scored (a subset of ``in_variables``); default: all of ``in_variables``."""
    grid: tuple[int, int] = (32, 64)
    """(latitudes, longitudes) of the data; must match the dataset's ``lat``/``lon`` attrs."""
    lat_grid: Literal["auto", "equiangular", "legendre-gauss"] = "auto"
    """Latitude layout of the data. ``equiangular``: equally spaced and including both poles (WeatherBench2's
    240x121 and 1440x721, ERA5's 721 rows); ``legendre-gauss``: no pole row (WeatherBench2's 64x32 is equally
    spaced half a step off the poles, which Gauss-Legendre latitudes approximate best); ``auto``: equiangular
    for an odd latitude count, else legendre-gauss. SFNO uses it as torch-harmonics' grid; ClimaX pads the
    latitude axis across the poles by it."""
    patch_size: int | None = Field(default=None, ge=1)
    """ClimaX patch size (default: 4 for debug, 2 otherwise). A grid side that is not a multiple of it is
    padded inside the model (latitude across the poles, longitude periodically) and the output cropped back,
    so the data, the loss and the metrics stay on ``grid``."""
    history: int = Field(default=1, ge=1)
    """Input time steps per sample; must not exceed the dataset's stored history."""
    lead_hours: int = Field(default=24, gt=0)
    """The forecast lead the model is trained and scored at; longer leads are reached by rollout."""
    rollout_steps: int = Field(default=1, ge=1)
    """Autoregressive steps scored in the plots (baselines also in metrics): leads lead_hours * 1..rollout_steps.
    Rollout feeds predictions back, so it needs out_variables == in_variables."""
    residual: bool = True
    """Predict the change from the last input step (the model starts as persistence and learns the tendency)."""
    drop_path: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Stochastic depth rate of the last block (linearly increasing from 0)."""
    width: int | None = Field(default=None, ge=4)
    """ClimaX only: override the named size's embedding width (whole heads, a multiple of 4), e.g. to sweep
    model size in a scaling ladder or in a learning-rate transfer study."""
    mup: MupSpec | None = None
    """ClimaX only: muP against the same model at ``mup.base_width`` (docs/optimizers.md); null: standard."""

    @model_validator(mode="after")
    def _check_variables(self) -> "WeatherModelSpec":
        _check_subset(self.in_variables, self.variables, "model.in_variables", "model.variables")
        _check_subset(self.out_variables, self.model_inputs, "model.out_variables", "model.in_variables")
        if len(set(self.variables)) != len(self.variables):
            raise ValueError("model.variables lists a variable twice; each name must appear once")
        if min(self.grid) < 2:
            raise ValueError(f"model.grid {tuple(self.grid)}: expected at least 2 latitudes and 2 longitudes")
        if self.arch == "sfno" and (self.width is not None or self.mup is not None):
            raise ValueError("model.width and model.mup are implemented for model.arch climax only (SFNO's spectral "
                             "weights need a rule of their own). Hint: remove them or use arch: climax")
        heads = CLIMAX_SIZES[self.size][2]
        step = math.lcm(heads, 4)  # whole heads; the 2-D sin-cos position embedding splits the width in four
        for field, value in (("width", self.width), ("mup.base_width", self.mup and self.mup.base_width)):
            if value is not None and value % step:
                raise ValueError(f"model.{field} {value} must be a multiple of {step} for ClimaX size "
                                 f"{self.size!r} ({heads} attention heads; the sin-cos position embedding "
                                 f"needs a multiple of 4)")
        if self.arch == "climax" and self.patch > min(self.grid):
            raise ValueError(f"model.patch_size {self.patch} exceeds the smaller side of model.grid "
                             f"{tuple(self.grid)}; choose a patch size of at most {min(self.grid)}")
        return self

    @property
    def no_muon_reason(self) -> str | None:
        """Why ``optim.name: muon`` cannot train this model, or None (the family's rule: models/weather/__init__.py)."""
        if self.arch == "sfno":
            return ("model.arch sfno has no 2-D weight matrix for Muon: its channel mixing is 1x1 convolution "
                    "kernels and its spectral weights are real/imaginary pairs, both of which take AdamW")
        return None

    @property
    def model_inputs(self) -> list[str]:
        """The variables the model reads, in order."""
        return list(self.in_variables or self.variables)

    @property
    def model_outputs(self) -> list[str]:
        """The variables the model predicts, in order."""
        return list(self.out_variables or self.model_inputs)

    @property
    def patch(self) -> int:
        """The effective ClimaX patch size."""
        return self.patch_size or (4 if self.size == "debug" else 2)

    @property
    def has_poles(self) -> bool:
        """Whether the first and last latitude rows are the poles (``lat_grid``, resolved)."""
        if self.lat_grid == "auto":
            return self.grid[0] % 2 == 1
        return self.lat_grid == "equiangular"

    @property
    def rollout_leads(self) -> list[int]:
        """Leads scored by autoregressive rollout, in hours."""
        return [self.lead_hours * k for k in range(1, self.rollout_steps + 1)]


def _check_subset(names: list[str] | None, allowed: list[str], field: str, other: str) -> None:
    if names is None:
        return
    if not names:
        raise ValueError(f"{field} is empty; omit it to use all of {other}")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"{field} has {unknown}, which are not in {other} {allowed}; add them there or drop them")


MODEL_SPEC = WeatherModelSpec
