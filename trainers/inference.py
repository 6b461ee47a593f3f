"""Load a trained model for inference: plainly on one device, or split by Accelerate across GPUs, CPU and disk.

``max_memory`` maps a GPU index or ``"cpu"`` to a budget (bytes or a size such as ``"20GiB"``); the key
``"disk"`` allows what fits nowhere else to be offloaded to ``offload_dir``. With a budget, the model is built
without memory (Accelerate's ``init_empty_weights``), Accelerate's ``infer_auto_device_map`` assigns modules
to devices, keeping each family's repeated blocks (``Family.no_split``) whole, and
``load_checkpoint_and_dispatch`` loads the weights there and hooks every module so that its inputs and its
offloaded weights reach its execution device when it runs. A model that fits on one device is loaded plainly
and moved there (no hooks). A family whose model class itself is in ``no_split`` (MACE) is never split.

Torch-free at import: the CLI parses ``--max-memory`` before anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass, field

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # Accelerate's convention: GB = 10^9
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
GiB = 2**30


@dataclass(frozen=True)
class DevicePlan:
    """Where each module of a model goes under a ``max_memory`` budget."""

    entries: list[tuple[str, str, int]]
    """(module name, device, bytes) in model order; "" is the whole model."""
    budget: dict
    """The budget in bytes per device (GPU index or "cpu"), and "disk": True when disk offload is allowed."""
    whole: str | None = None
    """The family's class that is never split (the model went to one device whole), else None."""
    notes: list[str] = field(default_factory=list)

    def bytes_per_device(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, device, size in self.entries:
            out[str(device)] = out.get(str(device), 0) + size
        return out

    def devices(self) -> set[str]:
        return {str(device) for _, device, _ in self.entries}


def parse_size(text, where: str = "max_memory") -> int:
    """Bytes from an int or a size such as 20GiB, 512MB, 1.5GB (GB = 10^9 bytes, GiB = 2^30, as in Accelerate)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = _SIZE.match(str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{where}: {text!r} is not a size; expected a byte count or a number with a unit "
                         "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 20GiB or 512MB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_max_memory(text: str) -> dict:
    """``0=20GiB,cpu=64GiB,disk`` -> {0: 21474836480, "cpu": 68719476736, "disk": True} (what load_model and
    plan take). A bad item raises ValueError naming it."""
    out: dict = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, _, value = item.partition("=")
        out[_device_key(key.strip(), f"--max-memory {text!r}")] = value.strip() or None
    return normalize_budget(out, f"--max-memory {text!r}")


def normalize_budget(max_memory: dict, where: str = "max_memory") -> dict:
    """Validated budget: GPU indices and "cpu" to bytes; "disk" with any value but False (a bare ``disk`` on
    the command line) becomes True: disk offload allowed."""
    if not isinstance(max_memory, dict) or not max_memory:
        raise ValueError(f"{where}: expected a mapping of devices to budgets, e.g. {{0: '20GiB', 'cpu': '64GiB', "
                         "'disk': True}} (or 0=20GiB,cpu=64GiB,disk on the command line)")
    budget: dict = {}
    for key, value in max_memory.items():
        key = _device_key(key, where)
        if key == "disk":
            if value is not False:
                budget["disk"] = True
            continue
        if value is None:
            raise ValueError(f"{where}: device {key} has no budget; expected e.g. {key}=20GiB (only disk takes none)")
        budget[key] = parse_size(value, f"{where}: {key}")
    if not any(k != "disk" for k in budget):
        raise ValueError(f"{where}: no memory budget at all; give at least cpu=SIZE (and GPUs as INDEX=SIZE)")
    return budget


def _device_key(key, where: str):
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return key
    text = str(key).strip().lower()
    if text.startswith("cuda:"):
        text = text[len("cuda:"):]
    if text.isdigit():
        return int(text)
    if text in ("cpu", "disk"):
        return text
    raise ValueError(f"{where}: unknown device {key!r}; expected a GPU index (0, 1, ... or cuda:0), cpu or disk")


def plan_devices(spec, max_memory: dict, dtype=None) -> DevicePlan:
    """The device map ``spec``'s model gets under ``max_memory``, computed on a model without memory."""
    import torch
    from accelerate import init_empty_weights

    from models import load_family

    family = load_family(spec.model.family)
    with init_empty_weights(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # build-time warnings of the family's libraries (e3nn, torch-harmonics)
        model = family.build_model(spec.model)
    return _plan(model, family, normalize_budget(max_memory), dtype or torch.float32)


def _plan(model, family, budget: dict, dtype) -> DevicePlan:
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes

    sizes = compute_module_sizes(model, dtype=dtype)
    memory = {k: v for k, v in budget.items() if k != "disk"}
    if type(model).__name__ in family.no_split:
        return _whole(model, sizes[""], budget, memory)
    with _quiet_accelerate():  # "Device 0 is not available" when planning for GPUs on a CPU-only driver
        device_map = infer_auto_device_map(model, max_memory=dict(memory), dtype=dtype,
                                           no_split_module_classes=list(family.no_split))
    entries = [(name, str(device), sizes[name]) for name, device in device_map.items()]
    plan = DevicePlan(entries, budget)
    if "disk" in plan.devices() and not budget.get("disk"):
        plan.notes.append(f"{_gib(plan.bytes_per_device()['disk'])} fit in no budget: allow disk offload "
                          "(add disk) or raise a budget")
    if plan.devices() == {"disk"}:
        plan.notes.append(_nothing_fits(model, sizes, family))
    return plan


def _whole(model, total: int, budget: dict, memory: dict) -> DevicePlan:
    """Families that are never split (MACE) go whole to the first device whose budget holds them."""
    name = type(model).__name__
    for device in sorted((k for k in memory if isinstance(k, int))) + ["cpu"] * ("cpu" in memory):
        if memory[device] >= total:
            return DevicePlan([("", str(device), total)], budget, whole=name)
    return DevicePlan([("", "disk", total)], budget, whole=name,
                      notes=[f"{name} is loaded whole (not split across devices) and needs {_gib(total)}; no "
                             f"budget holds it: raise one to at least {_gib(total)}"])


def _nothing_fits(model, sizes: dict, family) -> str:
    from accelerate.utils import get_max_layer_size

    children = [(n, m) for n, m in model.named_children()]
    largest, _ = get_max_layer_size(children, sizes, list(family.no_split))
    return (f"nothing fits in memory: Accelerate keeps room for the largest block ({_gib(largest)}) on the "
            f"main device besides what it places there; raise cpu (or a GPU) above {_gib(largest)}")


def _gib(n: float) -> str:
    # Accelerate counts a bool as 1/8 byte, so sizes can be fractional
    return f"{n / GiB:.3f} GiB" if n >= GiB // 1000 else f"{round(n):,} B"


def render_devices(plan: DevicePlan, limit: int = 60) -> str:
    """The device map as ``module -> device (bytes)`` lines (runs of numbered siblings folded), then bytes
    per device and any note."""
    budget = ", ".join(f"{k}={_gib(v)}" if k != "disk" else "disk" for k, v in plan.budget.items())
    lines = [f"device map for max_memory {budget}:"]
    if plan.whole:
        lines.append(f"  {plan.whole} is never split (docs/design.md): the whole model goes to one device")
    folded = _fold(plan.entries)
    for name, device, size in folded[:limit]:
        lines.append(f"  {name or '(whole model)':<40} -> {device:<5} {_gib(size)}")
    if len(folded) > limit:
        lines.append(f"  ... {len(folded) - limit} more entries")
    lines.append("bytes per device: " + ", ".join(f"{d}: {_gib(b)}" for d, b in plan.bytes_per_device().items()))
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _fold(entries: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """blocks.0 .. blocks.7 on one device -> one line ``blocks.{0..7}`` with their summed bytes."""
    out: list[list] = []
    for name, device, size in entries:
        head, _, tail = name.rpartition(".")
        prev = out[-1] if out else None
        if prev and tail.isdigit() and prev[1] == device and prev[3] == head and int(tail) == prev[5] + 1:
            prev[2] += size
            prev[5] = int(tail)
            prev[0] = f"{head}.{{{prev[4]}..{tail}}}"
            continue
        first = int(tail) if tail.isdigit() else -2
        out.append([name, device, size, head if tail.isdigit() else None, first, first])
    return [(n, d, s) for n, d, s, *_ in out]


def load_model(source, *, device: str = "cpu", max_memory: dict | None = None, offload_dir: str | None = None,
               dtype=None):
    """The model of a :class:`trainers.sources.ModelSource` in eval mode, parameters frozen.

    Without ``max_memory``: built by the family, its state dict loaded, moved to ``device`` (and ``dtype``).
    With it: placed by Accelerate (module docstring); a split model's inputs may be on any device (its hooks
    move them), and ``device`` is not used. A map that needs the disk needs ``"disk"`` in ``max_memory`` and an
    ``offload_dir``."""
    import torch

    from models import load_family

    family = load_family(source.spec.model.family)
    if max_memory is None:
        return _frozen(_plain(family, source, device, dtype))
    budget = normalize_budget(max_memory)
    _check_gpus(budget)
    from accelerate import init_empty_weights

    with init_empty_weights(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = family.build_model(source.spec.model)
    plan = _plan(empty, family, budget, dtype or torch.float32)
    devices = plan.devices()
    if devices != {"disk"} and len(devices) == 1:
        return _frozen(_plain(family, source, _torch_device(devices.pop()), dtype))
    _check_offload(plan, source, offload_dir)
    return _frozen(_dispatch(empty, family, source, plan, offload_dir, dtype))


def _plain(family, source, device: str, dtype):
    from safetensors.torch import load_file

    model = family.build_model(source.spec.model)
    state = load_file(str(source.weights))
    missing, unexpected = _key_mismatch(model, state)
    if missing or unexpected:
        raise ValueError(f"{source.label}: weights {source.weights} do not fit the model of its spec "
                         f"({source.spec.model.family}/{getattr(source.spec.model, 'arch', '?')}): missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}. Hint: the spec and the weights come from "
                         "different runs; resolve the model by its run id or MLflow URI so both match")
    model.load_state_dict(state)  # not assign: load hooks (MACE's normalisation constants) must run
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def _key_mismatch(model, state: dict) -> tuple[list[str], list[str]]:
    own = set(model.state_dict())
    return sorted(own - set(state)), sorted(set(state) - own)


def _dispatch(empty, family, source, plan: DevicePlan, offload_dir: str | None, dtype):
    from accelerate import load_checkpoint_and_dispatch

    device_map = {name: int(dev) if dev.isdigit() else dev for name, dev, _ in plan.entries}
    with _quiet_accelerate():
        return load_checkpoint_and_dispatch(empty, checkpoint=str(source.weights), device_map=device_map,
                                            offload_folder=offload_dir, dtype=dtype,
                                            no_split_module_classes=list(family.no_split),
                                            preload_module_classes=list(family.no_split))


@contextlib.contextmanager
def _quiet_accelerate():
    """Accelerate prints a bar per tensor, warns that our safetensors lack Transformers' metadata, and warns
    that the root's own tensors are not submodule names: none of it concerns the user."""
    import logging
    from unittest import mock

    logger = logging.getLogger("accelerate")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), mock.patch("accelerate.utils.modeling.is_tqdm_available", return_value=False):
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _check_gpus(budget: dict) -> None:
    import torch

    gpus = sorted(k for k in budget if isinstance(k, int))
    if gpus and gpus[-1] >= torch.cuda.device_count():
        raise ValueError(f"max_memory names GPU {gpus[-1]} but torch sees {torch.cuda.device_count()} GPU(s). "
                         "Hint: `sciscale plan SPEC --max-memory ...` shows a device map for GPUs this machine "
                         "lacks; to load here, budget only the GPUs it has and cpu")


def _check_offload(plan: DevicePlan, source, offload_dir: str | None) -> None:
    if plan.notes:
        raise ValueError(f"{source.label}: cannot place the model under max_memory: " + "; ".join(plan.notes))
    if "disk" in plan.devices() and not offload_dir:
        raise ValueError(f"{source.label}: the device map offloads {_gib(plan.bytes_per_device()['disk'])} to disk "
                         "but no offload_dir was given. Hint: pass offload_dir (a local directory with that much "
                         "free space)")


def _torch_device(device: str) -> str:
    return f"cuda:{device}" if device.isdigit() else device


def _frozen(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # inference: no parameter gradients (forces differentiate the positions only)
    return model


def is_dispatched(model) -> bool:
    """Whether Accelerate split ``model`` (then it must not be moved with ``.to``)."""
    device_map = getattr(model, "hf_device_map", None)
    return bool(device_map) and len(set(device_map.values())) > 1
