"""Spherical Fourier neural operator baseline: torch-harmonics' SFNO behind the family's batch interface.

The data grids of WeatherBench2 (e.g. 64x32) hold equally spaced latitudes without the poles, which none of
torch-harmonics' quadratures describe exactly; Gauss-Legendre latitudes are the closest (they avoid the
poles and are nearly equally spaced), so the transforms use that grid. SFNO is trained at one lead.
"""

from __future__ import annotations

import torch
from torch import nn

from models.weather.config import SFNO_SIZES, WeatherModelSpec


class SFNOForecaster(nn.Module):
    """forward(batch) with ``inputs`` [b, T, V_in, H, W] -> [b, V_out, H, W] at the spec's lead."""

    def __init__(self, spec: WeatherModelSpec):
        super().__init__()
        from torch_harmonics.examples.models.sfno import SphericalFourierNeuralOperator

        dim, layers, scale = SFNO_SIZES[spec.size]
        inputs = spec.model_inputs
        self.residual = spec.residual
        self.register_buffer(
            "out_in_pos", torch.tensor([inputs.index(v) for v in spec.model_outputs]), persistent=False
        )
        self.net = SphericalFourierNeuralOperator(
            img_size=tuple(spec.grid),
            grid="legendre-gauss",
            grid_internal="legendre-gauss",
            scale_factor=scale,
            in_chans=spec.history * len(inputs),
            out_chans=len(spec.model_outputs),
            embed_dim=dim,
            num_layers=layers,
            pos_embed="none",
        )
        if self.residual:
            # a zero tendency at start: the untrained model is exactly persistence
            nn.init.zeros_(self.net.decoder[-1].weight)
        _store_complex_as_real(self.net)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.predict(batch["inputs"], batch["lead_hours"])

    def predict(self, inputs: torch.Tensor, lead_hours: torch.Tensor) -> torch.Tensor:
        """Normalised fields one model lead after the last input step (``lead_hours`` is fixed by training)."""
        b, t, v, h, w = inputs.shape
        out = self.net(inputs.reshape(b, t * v, h, w))
        if self.residual:
            out = out + inputs[:, -1, self.out_in_pos]
        return out


class _RealPairs(nn.Module):
    """Parametrisation: a complex weight stored as two real tensors (real and imaginary part). DeepSpeed
    flattens parameters into real buffers and rejects complex ones."""

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        return torch.complex(real, imag)

    def right_inverse(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return value.real.clone(), value.imag.clone()


def _store_complex_as_real(module: nn.Module) -> None:
    from torch.nn.utils import parametrize

    for sub in list(module.modules()):
        for name, param in list(sub.named_parameters(recurse=False)):
            if param.is_complex():
                parametrize.register_parametrization(sub, name, _RealPairs())


def build_sfno(spec: WeatherModelSpec) -> SFNOForecaster:
    """The SFNO baseline of ``spec``; under ``torch.device("meta")`` it is built on CPU and moved to meta,
    because torch-harmonics precomputes its Legendre tables with ``.item()`` calls."""
    if torch.empty(0).device.type == "meta":
        with torch.device("cpu"):
            return SFNOForecaster(spec).to("meta")
    return SFNOForecaster(spec)
