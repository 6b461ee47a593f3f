"""Spherical Fourier neural operator baseline: torch-harmonics' SFNO behind the family's batch interface.

The spherical harmonic transforms need the data's latitudes (``spec.lat_grid``): grids with both poles
(WeatherBench2's 240x121 and 1440x721, ERA5) are torch-harmonics' ``equiangular`` grid exactly; WeatherBench2's
pole-free 64x32 grid (equally spaced, half a step off the poles) is described by none of its quadratures, and
Gauss-Legendre latitudes, which avoid the poles and are nearly equally spaced, are the closest. Internally
the network works on a Gauss-Legendre grid (torch-harmonics' default). SFNO is trained at one lead.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_harmonics.examples.models._layers import SpectralConvS2

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
            grid=sht_grid(spec),
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


def sht_grid(spec: WeatherModelSpec) -> str:
    """torch-harmonics' name for the data's latitude grid."""
    return "equiangular" if spec.has_poles else "legendre-gauss"


def _store_complex_as_real(module: nn.Module) -> None:
    """DeepSpeed flattens parameters into real buffers and rejects complex ones: keep each spectral weight
    as its real and imaginary parts (the module class swap keeps the model picklable for MLflow export)."""
    for sub in module.modules():
        if type(sub) is SpectralConvS2:
            weight = sub._parameters.pop("weight")
            sub.__class__ = _RealPairSpectralConv
            sub.weight_real = nn.Parameter(weight.detach().real.clone())
            sub.weight_imag = nn.Parameter(weight.detach().imag.clone())
    left = [n for n, p in module.named_parameters() if p.is_complex()]
    if left:
        raise TypeError(f"SFNO: complex parameters {left} remain; DeepSpeed cannot flatten them")


class _RealPairSpectralConv(SpectralConvS2):
    """torch-harmonics' spectral convolution with its complex weight stored as two real parameters."""

    @property
    def weight(self) -> torch.Tensor:
        return torch.complex(self.weight_real, self.weight_imag)


def build_sfno(spec: WeatherModelSpec) -> SFNOForecaster:
    """The SFNO baseline of ``spec``; under ``torch.device("meta")`` it is built on CPU and moved to meta,
    because torch-harmonics precomputes its Legendre tables with ``.item()`` calls."""
    if torch.empty(0).device.type == "meta":
        with torch.device("cpu"):
            return SFNOForecaster(spec).to("meta")
    return SFNOForecaster(spec)
