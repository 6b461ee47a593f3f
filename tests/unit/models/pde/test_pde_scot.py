"""scOT: Poseidon's parameter counts on the meta device, shapes, window locality, time conditioning."""

import math

import pytest
import torch

from models.pde.config import PdeModelSpec
from models.pde.scot import ScOT, SwinLayer, TimeLayerNorm, _log_spaced_table, _shift_mask


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: more threads only spin
    yield
    torch.set_num_threads(before)


def _spec(**kw):
    return PdeModelSpec(**{"family": "pde", "arch": "scot", "size": "debug", "in_channels": 2,
                           "resolution": 32, **kw})


@pytest.mark.parametrize("size,expected", [("T", 20.77e6), ("B", 157.73e6), ("L", 628.58e6), ("XL", 2.5e9)])
def test_parameter_counts_match_poseidon_on_meta_device(size, expected):
    # Poseidon's checkpoints take and predict 4 channels (rho, u, v, p).
    with torch.device("meta"):
        model = ScOT(_spec(size=size, in_channels=4, resolution=128))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.02, f"{size}: {count / 1e6:.2f}M"


def test_forward_backward_and_persistence_at_init():
    spec = _spec()
    model = ScOT(spec)
    batch = {"x": torch.randn(3, 2, 32, 32), "lead_time": torch.rand(3)}
    out = model(batch)
    torch.testing.assert_close(out, batch["x"])  # zero-initialised last layer + residual
    out.square().mean().backward()
    assert model.recovery_mixup.weight.grad.abs().sum() > 0


def test_channel_change_touches_only_embedding_and_recovery():
    a = ScOT(_spec()).state_dict()
    b = ScOT(_spec(in_channels=3, out_channels=1, residual=False)).state_dict()
    assert a.keys() == b.keys()
    mismatched = {k for k in a if a[k].shape != b[k].shape}
    assert mismatched == {"embed.weight", "recovery.weight", "recovery.bias", "recovery_mixup.weight"}


def _affected(layer, x, token):
    bumped = x.clone()
    bumped[0, token[0], token[1]] += 1.0
    t = torch.zeros(1)
    return ((layer(bumped, t) - layer(x, t)).abs().sum(-1)[0] > 1e-6).nonzero().tolist()


def _block(rows, cols):
    return [[r, c] for r in rows for c in cols]


def test_windows_are_local_and_shifted_windows_cross_boundaries_but_not_the_seam():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 12)  # 8x8 tokens, window 4: a 2x2 window layout
    plain, shifted = SwinLayer(12, 3, 4, shifted=False), SwinLayer(12, 3, 4, shifted=True)
    for layer in (plain, shifted):
        layer.apply(lambda m: m.reset_parameters() if isinstance(m, TimeLayerNorm) else None)
    assert _affected(plain, x, (3, 3)) == _block(range(4), range(4))
    assert _affected(shifted, x, (3, 3)) == _block(range(2, 6), range(2, 6))  # shift 2 crosses the boundary
    # the cyclic shift puts token (0, 0) beside (6, 6); the mask keeps them apart (not neighbours)
    assert _affected(shifted, x, (0, 0)) == _block(range(2), range(2))


def test_shift_mask_and_position_table():
    mask = _shift_mask(8, 8, 4, 2, "cpu")
    assert mask.shape == (4, 16, 16)
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all() and torch.equal(mask, mask.transpose(1, 2))
    assert (mask[0] == 0).all() and (mask[-1] < 0).any()  # only windows at the wrap-around seam mix regions
    table, index = _log_spaced_table(4, "cpu")
    assert table.shape == (49, 2) and table.abs().max() == pytest.approx(math.log2(9) / 3)  # Swin V2: log2(8+1)/log2(8)
    assert index.shape == (16, 16) and (index.diagonal() == 24).all()


def test_time_layer_norm_depends_on_lead_time():
    norm = TimeLayerNorm(6)
    torch.nn.init.normal_(norm.weight.weight)
    x = torch.randn(2, 3, 6)
    out = norm(x, torch.tensor([0.0, 1.0]))
    same = norm(x, torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(out[0], same[0])
    assert not torch.allclose(out[1], same[1])


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = ScOT(_spec(residual=False))
    batch = {"x": torch.randn(2, 2, 32, 32), "lead_time": torch.rand(2)}
    model(batch).square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing = True
    model(batch).square().mean().backward()
    for r, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, r)


def test_wrong_resolution_is_reported():
    with pytest.raises(ValueError, match="model.resolution is 32"):
        ScOT(_spec())({"x": torch.randn(1, 2, 64, 64), "lead_time": torch.zeros(1)})


def test_width_overrides_the_named_sizes_embedding_width():
    from models import load_family

    def count(**kw):
        with torch.device("meta"):
            return sum(p.numel() for p in load_family("pde").build_model(_spec(**kw)).parameters())

    assert count(width=48) > 3 * count()  # debug is 24 wide; parameters grow about with width squared
    assert count(arch="fno", width=64) > 3 * count(arch="fno")  # FNO debug: 32 hidden channels
    with pytest.raises(ValueError, match="multiple of 3 for scOT size 'debug'"):
        _spec(width=32)
