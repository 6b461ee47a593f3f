"""Big-model loading: plainly, or split by Accelerate across CPU and disk with outputs equal to the plain model's;
buffers, dict batches and autograd forces through offloaded modules; the device map `sciscale plan` prints."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models import load_family
from orchestrator.specload import validate_spec
from trainers.inference import GiB, load_model, normalize_budget, parse_max_memory, plan_devices, render_devices
from trainers.sources import ModelSource

BASE = {"data": {"train": [{"url": "/nonexistent/train"}], "canonical_streams": 2},
        "train": {"global_batch_size": 4, "micro_batch_size": 2, "max_steps": 10}}
SCOT = {"family": "pde", "arch": "scot", "size": "debug", "in_channels": 2, "resolution": 32}
CLIMAX = {"family": "weather", "arch": "climax", "size": "debug", "grid": [32, 64], "lead_hours": 24,
          "rollout_steps": 3, "variables": ["geopotential_500", "2m_temperature", "10m_wind_speed"]}
ESCAIP = {"family": "atoms", "arch": "escaip", "size": "debug", "cutoff": 4.0, "max_neighbors": 24,
          "stress": True, "reference_energies": {"Cu": -0.5}}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _source(tmp_path, model_spec: dict) -> tuple[ModelSource, torch.nn.Module]:
    """A source whose weights are a freshly initialised model's (non-trivial: trained models are not at init,
    so zero-initialised output layers get random values), and that model, plainly built."""
    spec = validate_spec({"name": "t", "model": model_spec, **BASE})
    family = load_family(spec.model.family)
    torch.manual_seed(0)
    model = family.build_model(spec.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return ModelSource(spec, str(path), "test model"), model.eval()


def _small_cpu(source: ModelSource, fraction: float = 0.4) -> dict:
    """A CPU budget below the model's size, so that Accelerate offloads the rest to disk."""
    from accelerate.utils import compute_module_sizes

    with torch.device("meta"):
        size = compute_module_sizes(load_family(source.spec.model.family).build_model(source.spec.model))[""]
    return {"cpu": int(size * fraction), "disk": True}


@pytest.mark.parametrize("model_spec", [SCOT, CLIMAX, {**SCOT, "arch": "fno"}, {**CLIMAX, "arch": "sfno"}],
                         ids=["scot", "climax", "fno", "sfno"])
def test_split_across_cpu_and_disk_equals_the_plain_model(tmp_path, model_spec):
    source, reference = _source(tmp_path, model_spec)
    family = load_family(source.spec.model.family)
    batch = family.example_batch(source.spec.model, 2)
    plain = load_model(source)
    split = load_model(source, max_memory=_small_cpu(source), offload_dir=str(tmp_path / "offload"))
    devices = set(split.hf_device_map.values())
    assert {"cpu", "disk"} <= devices, split.hf_device_map
    assert os.listdir(tmp_path / "offload")  # weights really went to disk
    assert any(p.device.type == "meta" for p in split.parameters())  # offloaded: loaded only while running
    with torch.no_grad():
        want, got, trained = plain(batch), split(batch), reference(batch)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the plain load is the model that was saved: the same tensors (its outputs may differ in the last bit where
    # the CPU kernels pick another code path for other memory layouts, as on some machines for ClimaX)
    saved = reference.state_dict()
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(want, trained, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in split.parameters()) and not split.training


def test_weather_rollout_runs_a_split_model_through_forward(tmp_path):
    from models.weather.plots import rollout

    source, _ = _source(tmp_path, CLIMAX)
    batch = load_family("weather").example_batch(source.spec.model, 2)
    split = load_model(source, max_memory=_small_cpu(source), offload_dir=str(tmp_path / "off"))
    assert split.hf_device_map["blocks"] == "disk" and split.hf_device_map["pos_embed"] == "disk"
    torch.testing.assert_close(rollout(split, batch, source.spec.model), rollout(load_model(source), batch,
                                                                                   source.spec.model), rtol=0, atol=1e-6)


def test_pde_rollout_of_a_split_scot_equals_the_plain_one(tmp_path):
    from types import SimpleNamespace

    from data.format import FieldSpec
    from models.pde.loss import lead_time_errors

    source, _ = _source(tmp_path, SCOT)
    spec, family, rng = source.spec.model, load_family("pde"), np.random.default_rng(0)
    fields = {"u": FieldSpec(dtype="float32", shape=(4, 2, 32, 32)), "t": FieldSpec(dtype="float32", shape=(4,))}
    manifest = SimpleNamespace(attrs={"channel_mean": [0.1, 0.0], "channel_std": [2.0, 1.0], "split": "val"},
                               fields=fields)
    transform = family.make_transform(spec, manifest)
    batch = family.collate([transform({"u": rng.normal(size=(4, 2, 32, 32)).astype(np.float32),
                                       "t": np.linspace(0, 1, 4).astype(np.float32)}, rng) for _ in range(2)])
    split = load_model(source, max_memory=_small_cpu(source), offload_dir=str(tmp_path / "off"))
    want, got = lead_time_errors(load_model(source), batch, spec), lead_time_errors(split, batch, spec)
    assert len(got["rollout"]) == len(got["lead_time"]) >= 2 and got["rollout"][-1] > 0
    for curve in ("direct", "rollout"):
        np.testing.assert_allclose(got[curve], want[curve], rtol=1e-6)


def test_escaip_forces_and_stress_by_autograd_through_offloaded_blocks(tmp_path):
    source, _ = _source(tmp_path, ESCAIP)
    batch = load_family("atoms").example_batch(source.spec.model, 2)
    split = load_model(source, max_memory=_small_cpu(source, 0.8), offload_dir=str(tmp_path / "off"))
    assert {"cpu", "disk"} <= set(split.hf_device_map.values())
    assert float(split.ref_energy[29]) == -0.5  # a buffer set from the spec survives dispatch
    want, got = load_model(source)(batch), split(batch)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)


def test_calculator_from_a_source_split_in_float64(tmp_path):
    from ase.build import bulk

    from models.atoms.calculator import SciscaleCalculator

    source, _ = _source(tmp_path, ESCAIP)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.rattle(0.05, seed=1)
    results = []
    for kw in ({}, {"max_memory": _small_cpu(source, 0.8), "offload_dir": str(tmp_path / "off")}):
        atoms.calc = SciscaleCalculator.from_source(source, **kw)
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    assert len(set(atoms.calc.model.hf_device_map.values())) > 1
    assert next(p for p in atoms.calc.model.parameters() if p.device.type != "meta").dtype == torch.float64
    for plain, split in zip(*results):
        np.testing.assert_allclose(split, plain, rtol=0, atol=1e-9)


def test_mace_is_never_split(tmp_path):
    spec = validate_spec({"name": "t", "model": {"family": "atoms", "arch": "mace", "elements": ["Cu"],
                                                 "mace_avg_num_neighbors": 7.5}, **BASE})
    plan = plan_devices(spec, {"cpu": 1000, "disk": True})
    assert plan.whole == "MaceModel" and plan.devices() == {"disk"}
    assert "is loaded whole" in plan.notes[0]
    fits = plan_devices(spec, {"cpu": "1GiB"})
    assert fits.entries == [("", "cpu", fits.entries[0][2])] and not fits.notes


def test_model_on_one_device_is_loaded_plainly(tmp_path):
    source, _ = _source(tmp_path, SCOT)
    model = load_model(source, max_memory={"cpu": "1GiB"})
    assert getattr(model, "hf_device_map", None) is None  # no hooks: it can be moved and its forward is plain
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_split_needs_disk_allowed_and_an_offload_dir(tmp_path):
    source, _ = _source(tmp_path, SCOT)
    budget = _small_cpu(source)
    with pytest.raises(ValueError, match=r"fit in no budget: allow disk offload \(add disk\) or raise a budget"):
        load_model(source, max_memory={"cpu": budget["cpu"]})
    with pytest.raises(ValueError, match=r"offloads .* to disk but no offload_dir was given"):
        load_model(source, max_memory=budget)
    with pytest.raises(ValueError, match=r"nothing fits in memory: Accelerate keeps room for the largest block"):
        load_model(source, max_memory={"cpu": 10, "disk": True}, offload_dir=str(tmp_path))


def test_budget_naming_an_absent_gpu_is_refused_when_loading(tmp_path):
    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    source, _ = _source(tmp_path, SCOT)
    with pytest.raises(ValueError, match=r"max_memory names GPU 0 but torch sees 0 GPU"):
        load_model(source, max_memory={0: "1GiB", "cpu": "1GiB"})


def test_parse_max_memory():
    assert parse_max_memory("0=20GiB,cpu=64GiB,disk") == {0: 20 * GiB, "cpu": 64 * GiB, "disk": True}
    assert parse_max_memory("cuda:1=1.5GB, cpu=512MiB") == {1: 1_500_000_000, "cpu": 512 * 2**20}
    assert normalize_budget({"cpu": 100, "disk": False}) == {"cpu": 100}
    for text, message in (("cpu=lots", r"'lots' is not a size"), ("gpu=1GB", r"unknown device 'gpu'"),
                          ("0", r"device 0 has no budget"), ("disk", r"no memory budget at all")):
        with pytest.raises(ValueError, match=message):
            parse_max_memory(text)


def test_plan_for_gpus_the_driver_lacks_folds_numbered_blocks():
    spec = validate_spec({"name": "t", "model": {**CLIMAX, "size": "B"}, **BASE})
    plan = plan_devices(spec, parse_max_memory("0=100MB,1=100MB,cpu=200MB,disk"))
    per_device = plan.bytes_per_device()
    assert set(per_device) == {"0", "1", "cpu", "disk"} and not plan.notes
    assert sum(per_device.values()) == sum(size for _, _, size in plan.entries)
    text = render_devices(plan)
    assert text.startswith("device map for max_memory 0=0.093 GiB, 1=0.093 GiB, cpu=0.186 GiB, disk:")
    assert "  blocks.{1..2}" in text and "-> cpu" in text and "bytes per device: 0: 0.016 GiB, 1: 0.047 GiB" in text


@pytest.mark.parametrize("family,arches", [("pde", {"scot": SCOT, "fno": {**SCOT, "arch": "fno"}}),
                                           ("weather", {"climax": CLIMAX, "sfno": {**CLIMAX, "arch": "sfno"}}),
                                           ("atoms", {"escaip": ESCAIP, "mace": {"family": "atoms", "arch": "mace",
                                                                                 "elements": ["Cu"]}})])
def test_every_no_split_class_is_a_class_of_the_familys_models(family, arches):
    names = set()
    for model_spec in arches.values():
        spec = validate_spec({"name": "t", "model": model_spec, **BASE})
        with torch.device("meta"):
            names |= {type(m).__name__ for m in load_family(family).build_model(spec.model).modules()}
    assert set(load_family(family).no_split) <= names, sorted(set(load_family(family).no_split) - names)
