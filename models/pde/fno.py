"""FNO baseline: neuraloperator's FNO (the reference implementation) with the lead time as an input channel.

Parameter names that depend on the channel counts sit only in ``operator.lifting.fcs.0`` (inputs) and
``operator.projection.fcs.1`` (outputs), so fine-tuning on other channels re-initialises just those.
"""

from __future__ import annotations

import torch
from neuralop.layers.spectral_convolution import SpectralConv
from neuralop.models import FNO
from torch import nn

from models.pde.config import FNO_SIZES, PdeModelSpec


class RealWeightSpectralConv(SpectralConv):
    """neuraloperator's SpectralConv with its complex weight stored as a real parameter [..., 2].

    DeepSpeed rejects complex parameters (its gradient all-reduce asserts on complex64 and ZeRO's flat
    buffers cast them), so the weight is kept as real/imaginary pairs and viewed as complex when used.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        dense = self.weight if torch.is_tensor(self.weight) else self.weight.to_tensor()
        del self.weight
        self.weight_ri = nn.Parameter(torch.view_as_real(dense.detach().clone()))

    @property
    def weight(self):
        if "weight_ri" in self._parameters:
            return torch.view_as_complex(self._parameters["weight_ri"])
        return self._modules["weight"]  # during SpectralConv.__init__, before the swap


class PdeFNO(nn.Module):
    """u(t) -> u(t + lead_time); the lead time enters as one constant extra input channel."""

    def __init__(self, spec: PdeModelSpec):
        super().__init__()
        size = FNO_SIZES[spec.size]
        self.residual = spec.residual
        self.operator = FNO(
            n_modes=(size["modes"], size["modes"]),
            in_channels=spec.in_channels + 1,
            out_channels=spec.out_ch,
            hidden_channels=spec.width or size["hidden_channels"],
            n_layers=size["n_layers"],
            conv_module=RealWeightSpectralConv,
        )
        if self.residual:
            # Start at the persistence prediction, so training only has to learn the change.
            last = self.operator.projection.fcs[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def state_dict(self, *args, **kwargs):
        # neuralop's FNO adds an unprefixed "_metadata" entry to its parent's state dict, which a strict load
        # (DeepSpeed's load_checkpoint) of this wrapper then rejects: tensors only.
        state = super().state_dict(*args, **kwargs)
        state.pop("_metadata", None)
        return state

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["x"]
        lead = batch["lead_time"].to(x.dtype).reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])
        out = self.operator(torch.cat([x, lead], dim=1))
        return x[:, : out.shape[1]] + out if self.residual else out
