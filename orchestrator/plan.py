"""`sciscale plan`: parameter count, per-rank memory per ZeRO stage, and the batch decomposition; with
``--max-memory``, the device map the model gets for inference (trainers/inference.py).

The model is built on the meta device (no memory, no data). Activation memory is measured by running one
micro-batch forward on meta tensors and adding up the tensors autograd saves for the backward pass.
"""

from __future__ import annotations

from orchestrator.spec import JobSpec, batch_problem

GiB = 1024**3


def count_and_activations(spec: JobSpec) -> tuple[int, int, int | None]:
    """(parameters, trainable parameters, activation bytes per micro-batch or None if not measurable)."""
    family, model = _meta_model(spec)
    total = sum(p.numel() for p in model.parameters())
    trainable = total - sum(p.numel() for n, p in model.named_parameters() if any(n.startswith(f) for f in spec.train.freeze))
    return total, trainable, _activation_bytes(model, family, spec)


def size_and_flops(spec: JobSpec) -> tuple[int, int | None]:
    """(parameters, FLOPs of one sample's forward and backward as torch's FLOP counter counts them, or None
    where an op has no meta kernel): a scaling ladder's N and its compute per training sample."""
    from torch.utils.flop_counter import FlopCounterMode

    family, model = _meta_model(spec)
    n = sum(p.numel() for p in model.parameters())
    try:
        batch = _meta_batch(family, spec, 1)
        counter = FlopCounterMode(display=False)
        with counter:
            family.loss(model(batch), batch, spec.model).backward()
        return n, int(counter.get_total_flops()) or None
    except Exception:  # noqa: BLE001 - then C = 6 N D stands in (orchestrator/scaling.py)
        return n, None


def _meta_model(spec: JobSpec):
    """(family, the spec's model built on the meta device: shapes without memory)."""
    import torch

    from models import load_family

    family = load_family(spec.model.family)
    with torch.device("meta"):
        return family, family.build_model(spec.model)


def _meta_batch(family, spec: JobSpec, size: int) -> dict:
    """The family's example batch of ``size`` samples, on the meta device."""
    import torch

    batch = family.example_batch(spec.model, size)
    return {k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()}


def _activation_bytes(model, family, spec: JobSpec) -> int | None:
    import torch

    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    try:
        batch = _meta_batch(family, spec, spec.train.micro_batch_size)
        # bf16 autocast saves bf16 copies of matmul and convolution inputs: approximated by a bf16 forward (autocast
        # does not dispatch on the meta device)
        dtype = torch.bfloat16 if spec.train.precision == "bf16" else torch.float32
        model.to(dtype)
        batch = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(batch)
    except Exception:  # noqa: BLE001 - some ops have no meta kernel; then the estimate says "unknown"
        return None
    return saved


def zero_memory(params: int, trainable: int, stage: int, world: int) -> dict[str, float]:
    """Bytes per rank for parameters, gradients and Adam state under ZeRO ``stage``: fp32 weights, gradients and
    Adam moments, at either precision (bf16 is torch.autocast, trainers/ds.py)."""
    p_bytes, g_bytes, o_bytes = 4, 4, 8
    shard = {0: (1, 1, 1), 1: (1, 1, world), 2: (1, world, world), 3: (world, world, world)}[stage]
    return {
        "params": params * p_bytes / shard[0],
        "grads": trainable * g_bytes / shard[1],
        "optimizer": trainable * o_bytes / shard[2],
    }


def render_plan(spec: JobSpec, max_memory: dict | None = None) -> str:
    """The plan as text; ``max_memory`` (trainers.inference.parse_max_memory) adds the inference device map."""
    text = _render_training(spec)
    if max_memory is None:
        return text
    from trainers.inference import plan_devices, render_devices

    return f"{text}\n\n{render_devices(plan_devices(spec, max_memory))}"


def _render_training(spec: JobSpec) -> str:
    total, trainable, act = count_and_activations(spec)
    t, d = spec.train, spec.distributed
    lines = [f"model: {spec.model.family}/{getattr(spec.model, 'arch', '')} size {getattr(spec.model, 'size', '')}",
             f"parameters: {total:,} ({total / 1e6:.2f}M), trainable {trainable:,}",
             f"activations per micro-batch of {t.micro_batch_size}: "
             + (f"{act / GiB:.3f} GiB" if act is not None else "unknown (model has ops without meta kernels)")
             + (" (before activation checkpointing)" if d.activation_checkpointing else ""),
             "", "batch decomposition: global = micro x accumulation x world"]
    for world in d.world_sizes():
        problem = batch_problem(spec, world)
        if problem:
            lines.append(f"  world {world}: impossible ({problem})")
        else:
            accum = t.global_batch_size // (t.micro_batch_size * world)
            lines.append(f"  world {world}: {t.global_batch_size} = {t.micro_batch_size} x {accum} x {world}")
    lines += ["", f"per-rank memory estimate (GiB; fp32 weights{', bf16 autocast' if t.precision == 'bf16' else ''}, Adam):",
              f"  {'world':>5} {'stage':>5} {'params':>9} {'grads':>9} {'optim':>9} {'activ':>9} {'total':>9}"]
    for world in d.world_sizes():
        for stage in (0, 1, 2, 3):
            mem = zero_memory(total, trainable, stage, world)
            activ = act or 0
            mark = " <- spec" if stage == d.zero_stage else ""
            lines.append(f"  {world:>5} {stage:>5} {mem['params'] / GiB:>9.3f} {mem['grads'] / GiB:>9.3f} "
                         f"{mem['optimizer'] / GiB:>9.3f} {activ / GiB:>9.3f} "
                         f"{(sum(mem.values()) + activ) / GiB:>9.3f}{mark}")
    if d.offload_optimizer:
        lines.append("  offload_optimizer: the optimizer column lives in CPU memory instead")
    return "\n".join(lines)
