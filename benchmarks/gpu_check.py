"""GPU check (issue 16): bf16 step time, TFLOP/s and MFU of the pretraining models, and all-reduce bandwidth.

    python benchmarks/gpu_check.py --out gpu_check.json     # on a GPU machine, under 8 minutes
    python benchmarks/gpu_check.py --cpu-smoke              # the same code paths, tiny sizes, CPU, < 60 s

For scOT-B, ClimaX-B and EScAIP-H512L10, each built from its pretraining spec in examples/ (the model section
and the micro-batch as written there) with the family's own builder, synthetic batch and loss:
- FLOPs of one forward + loss + backward, from torch's FlopCounterMode, counted on the plain model with
  activation checkpointing off (model FLOPs: recomputation is not useful work);
- the median step time of bf16 steps through ``deepspeed.initialize`` with ZeRO-2 on one rank, the config
  from trainers/ds.py plus an ``Adam`` optimizer section, so DeepSpeed builds its FusedAdam on CUDA (the
  optimizer column names what it built; where FusedAdam cannot be built, torch's AdamW(fused=True) is passed
  instead and the note says why); ``train.precision: bf16`` as the trainer runs it (DeepSpeed's
  ``torch_autocast`` section: fp32 weights and optimizer state, the forward under bf16 autocast);
- TFLOP/s = FLOPs / step time, MFU = TFLOP/s / the device's dense bf16 peak (PEAK_TFLOPS below; n/a for a
  device not in the table), and the peak memory of the steps.
With more than one GPU, NCCL all-reduce of 256 MiB bf16 tensors, one process per GPU: bus bandwidth
2(n-1)/n x bytes / time. Each measurement records its error in its row instead of stopping the others, and no
new measurement starts after BUDGET_S - RESERVE_S seconds. Prints one table; ``--out`` writes it as JSON.

``--cpu-smoke`` runs every path on CPU with the debug sizes, micro-batch 2, two timed steps, gloo, and an
all-reduce of 1 MiB over 2 processes; tests/unit/benchmarks/test_gpu_check.py runs it. Its FLOPs miss CPU
attention kernels that FlopCounterMode does not know, and its FusedAdam is skipped (DeepSpeed's CPU FusedAdam
is a C++ build on first use, minutes on 2 cores), so it exercises the AdamW(fused=True) fallback.
A CUDA build of torch is needed on the GPU machine. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_S = 480.0
RESERVE_S = 90.0  # kept for the all-reduce (process start-up and CUDA init per GPU) and the table
# device-name substring -> dense bf16 TFLOP/s (no sparsity); the first match wins, so specific names come first
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("B200", 2250), ("A100", 312),
    ("L40S", 362), ("L40", 181), ("L4", 121), ("A10G", 70), ("A10", 125), ("V100", 125),  # V100: fp16, no bf16
    ("RTX 4090", 165), ("RTX A6000", 155),
)
# row name -> (pretraining example spec, --set overrides for the CPU smoke)
MODELS: dict[str, tuple[str, list[str]]] = {
    "scOT-B": ("examples/pde/pretrain_scot_B.yaml", ["model.size=debug", "model.resolution=32"]),
    "ClimaX-B": ("examples/weather/climax_B_era5_64x32.yaml", ["model.size=debug", "model.patch_size=null"]),
    "EScAIP-H512L10": ("examples/atoms/omat24_escaip_h512l10.yaml", ["model.size=debug"]),
}
COLUMNS = (("model", 15, "s"), ("size", 8, "s"), ("params_M", 8, ".2f"), ("batch", 5, "d"), ("gflop", 8, ".4g"),
           ("step_ms", 8, ".1f"), ("tflops", 7, ".3g"), ("mfu", 6, ".1%"), ("peak_gib", 8, ".2f"),
           ("optimizer", 30, "s"))


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a device by its name (torch.cuda.get_device_name), or None when not in the table."""
    return next((peak for key, peak in PEAK_TFLOPS if key.lower() in name.lower()), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _build(name: str, smoke: bool, device: torch.device):
    """(job spec, family, model on ``device``, batch on ``device``) of one row, as the trainer builds them."""
    from models import load_family
    from orchestrator.specload import load_spec

    example, overrides = MODELS[name]
    overrides = (overrides + ["train.micro_batch_size=2"]) if smoke else []
    spec = load_spec(ROOT / example, overrides, check_files=False)
    family = load_family(spec.model.family)
    torch.manual_seed(0)
    model = family.build_model(spec.model).to(device)
    return spec, family, model, _to_device(family.example_batch(spec.model, spec.train.micro_batch_size), device)


def _count_flops(family, model, batch: dict, spec, device: torch.device) -> int:
    """FLOPs of one forward + loss + backward, without activation checkpointing (model FLOPs, not hardware)."""
    from torch.utils.flop_counter import FlopCounterMode

    ckpt = getattr(model, "activation_checkpointing", False)
    model.activation_checkpointing = False
    counter = FlopCounterMode(display=False)
    try:
        with counter:  # one entry: entering FlopCounterMode again clears its counts
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = family.loss(model(batch), batch, spec.model)
            loss.backward()
    finally:
        model.activation_checkpointing = ckpt
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def fused_adam_problem(device: torch.device) -> str | None:
    """Why DeepSpeed's FusedAdam cannot be used, or None. Building one here compiles its CUDA kernel on first
    use (nvcc, cached under ~/.cache/torch_extensions), so the per-model rows do not pay for it."""
    if device.type != "cuda":
        return "AdamW(fused=True): DeepSpeed's CPU FusedAdam is a C++ build (minutes)"
    try:
        from deepspeed.ops.adam import FusedAdam

        FusedAdam([torch.zeros(1, device=device, requires_grad=True)])
    except Exception as exc:  # no nvcc, a toolkit that does not match torch's CUDA, ...
        return f"AdamW(fused=True): no FusedAdam ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def _engine(model, spec, fused_problem: str | None):
    """A ZeRO-2 bf16-autocast engine of one rank from trainers/ds.py's config; returns (engine, optimizer name)."""
    import deepspeed

    from orchestrator.spec import DistributedSpec, TrainSpec
    from trainers import ds

    micro = spec.train.micro_batch_size
    train = TrainSpec(global_batch_size=micro, micro_batch_size=micro, max_steps=10**6, precision="bf16")
    config = ds.ds_config(train, spec.optim, DistributedSpec(zero_stage=2), world_size=1)
    hyper = {"lr": spec.optim.lr, "betas": list(spec.optim.betas), "weight_decay": spec.optim.weight_decay}
    if fused_problem is None:
        config["optimizer"] = {"type": "Adam", "params": {**hyper, "adam_w_mode": True}}
        engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                                       config=config)
    else:
        adamw = torch.optim.AdamW(model.parameters(), fused=True, **hyper)
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=adamw, config=config)
    inner = getattr(optimizer, "optimizer", None)
    return engine, type(optimizer).__name__ + (f"({type(inner).__name__})" if inner is not None else "")


def _time_steps(engine, family, batch: dict, spec, device: torch.device, warmup: int, steps: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        loss = family.loss(engine(batch), batch, spec.model)  # as trainers/runner.py: the loss outside autocast
        engine.backward(loss)
        engine.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def measure_model(name: str, args, device: torch.device, peak: float | None, fused_problem: str | None,
                  row: dict) -> None:
    """Fill ``row`` for one model; what was measured before an error stays in the row."""
    spec, family, model, batch = _build(name, args.cpu_smoke, device)
    notes = [f"{int(batch['n_atoms'].sum())} atoms" if "n_atoms" in batch else None,
             "act. ckpt" if getattr(model, "activation_checkpointing", False) else None, fused_problem]
    row.update(size=spec.model.size, params_M=sum(p.numel() for p in model.parameters()) / 1e6,
               batch=spec.train.micro_batch_size, note="; ".join(filter(None, notes)))
    row["gflop"] = _count_flops(family, model, batch, spec, device) / 1e9
    engine, row["optimizer"] = _engine(model, spec, fused_problem)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = _time_steps(engine, family, batch, spec, device, args.warmup, args.steps)
    row["step_ms"] = 1e3 * statistics.median(times)
    row["tflops"] = row["gflop"] / statistics.median(times) / 1e3
    row["mfu"] = row["tflops"] / peak if peak else None
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30


def _allreduce_worker(rank: int, world: int, port: int, backend: str, numel: int, iters: int, out: str) -> None:
    import torch.distributed as dist

    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x = torch.zeros(numel, dtype=torch.bfloat16, device=device)  # zeros: repeated sums never overflow
    for _ in range(3):
        dist.all_reduce(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x)
    _sync(device)
    if rank == 0:
        Path(out).write_text(json.dumps((time.perf_counter() - start) / iters))
    dist.destroy_process_group()


def measure_allreduce(smoke: bool, row: dict) -> None:
    """Bus bandwidth of all-reduce, one process per GPU (NCCL); the smoke runs gloo over 2 CPU processes."""
    world = 2 if smoke else torch.cuda.device_count()
    backend, mib, iters = ("gloo", 1, 5) if smoke else ("nccl", 256, 20)
    row.update(model=f"all-reduce {backend}", size=f"{mib} MiB", batch=world)
    if world < 2:
        row["note"] = f"skipped: {world} GPU"
        return
    numel = mib * 2**20 // 2  # bf16
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds.json")
        # CUDA needs spawn; the smoke forks, which saves each worker the import of torch (seconds on 2 cores)
        torch.multiprocessing.start_processes(_allreduce_worker, nprocs=world, start_method="fork" if smoke else
                                              "spawn", args=(world, _free_port(), backend, numel, iters, out))
        seconds = json.loads(Path(out).read_text())
    row["step_ms"] = 1e3 * seconds
    row["bus_GBps"] = 2 * (world - 1) / world * numel * 2 / seconds / 1e9
    row["note"] = f"bus {row['bus_GBps']:.1f} GB/s over {world} ranks"


def _init_process_group(device: torch.device) -> None:
    """One rank for DeepSpeed (it reads the env:// variables), on a free port."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def _recorded(row: dict, measure, *args) -> None:
    """Run ``measure(*args, row)``; its error and wall time go into ``row``, never up."""
    start = time.monotonic()
    try:
        measure(*args, row)
    except Exception as exc:  # one failing measurement must not hide the others
        text = str(exc)  # a worker's error ends with its traceback's last line
        row["error"] = f"{type(exc).__name__}: {text if len(text) < 400 else text[:150] + ' ... ' + text[-250:]}"
    row["wall_s"] = time.monotonic() - start


def run(args) -> dict:
    import deepspeed  # slow to import (seconds): once, here

    start = time.monotonic()
    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda", 0)
    name = "cpu" if args.cpu_smoke else torch.cuda.get_device_name(device)
    peak = None if args.cpu_smoke else peak_tflops(name)
    _init_process_group(device)
    fused_problem = fused_adam_problem(device)
    rows = []
    for model_name in MODELS:
        rows.append(row := {"model": model_name})
        if time.monotonic() - start > BUDGET_S - RESERVE_S:
            row["error"] = f"skipped: past the {BUDGET_S - RESERVE_S:.0f} s budget"
            continue
        _recorded(row, measure_model, model_name, args, device, peak, fused_problem)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    torch.distributed.destroy_process_group()  # before the all-reduce: a forked worker would inherit it
    rows.append(row := {})
    _recorded(row, measure_allreduce, args.cpu_smoke)
    return {"device": name, "peak_tflops": peak, "torch": torch.__version__, "cuda": torch.version.cuda,
            "deepspeed": deepspeed.__version__, "smoke": args.cpu_smoke, "wall_s": time.monotonic() - start,
            "rows": rows}


def format_table(result: dict) -> str:
    def cell(row, key, width, fmt):
        value = row.get(key)
        return f"{'n/a' if value is None else format(value, fmt):>{width}}"

    lines = [f"device {result['device']}, dense bf16 peak {result['peak_tflops'] or 'unknown'} TFLOP/s, "
             f"torch {result['torch']}, DeepSpeed {result['deepspeed']}, {result['wall_s']:.1f} s",
             " ".join(f"{key:>{width}}" for key, width, _ in COLUMNS) + "  note"]
    for row in result["rows"]:
        note = "; ".join(filter(None, [row.get("note"), row.get("error") and f"ERROR {row['error']}"]))
        lines.append(" ".join(cell(row, *column) for column in COLUMNS) + "  " + " ".join(note.split()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU with gloo (< 60 s)")
    parser.add_argument("--out", help="write the table as JSON here")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model (default 3; smoke 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 10; smoke 2)")
    args = parser.parse_args()
    args.warmup = args.warmup if args.warmup is not None else 1 if args.cpu_smoke else 3
    args.steps = args.steps if args.steps is not None else 2 if args.cpu_smoke else 10
    if args.cpu_smoke:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(1)  # two intra-op threads on a shared 2-core machine run several times slower
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device (or a CPU build of torch); run it on a GPU machine, or use --cpu-smoke")
        sys.exit(2)
    result = run(args)
    print(format_table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
