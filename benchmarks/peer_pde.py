"""sciscale's FNO against neuraloperator's own `Trainer` on the same generated 2D Navier-Stokes data, side by side
in one run, alternating.

    python benchmarks/peer_pde.py --repeats 3 --json peer_pde.json   # ~10 min on 2 quiet cores, more under load
    python benchmarks/peer_pde.py --smoke                             # a check: 1 repeat, 12 steps (~1.5-3 min)

Data: `sciscale data generate navier-stokes` once per run. The peer gets in-memory tensors made by sciscale's own
data path (data/loader.py `build_loader` with the PDE family's transform and collate, at world size 1): the first
``steps`` global batches of the plan of the repeat's seed (the same global batches at every world size, drawn
pairs included, so both sides train on exactly the same samples in the same steps), and the whole val pass
(first kept snapshot -> last). The peer's input is what PdeFNO feeds its operator, u(t) concatenated with the
lead time as a constant channel; its target is sciscale's normalised target. The tensors are built before the
peer's command starts (not timed); loading them from a file is part of its launch to first step.

Both sides train the same model: neuraloperator's `FNO` with models/pde/config.py FNO_SIZES[--size]
(in 3 = u, v + lead, out 2), sciscale with ``model.residual: false`` so that its PdeFNO is the plain FNO too
(residual would add the input and zero the last layer); the same seed gives both the same initial weights
(checked). Same loss: sciscale's relative L1 per channel on normalised fields (models/pde/loss.py
``relative_l1``, batch mean), imported by the peer. Same optimizer: torch AdamW, betas (0.9, 0.999), eps 1e-8,
weight decay on weight tensors of 2 or more dimensions only (sciscale's rule: not on biases, the spectral
convolutions' [C, 1, 1] ones included), warmup + cosine per optimizer step, no gradient clipping (``optim.grad_clip: null`` on
sciscale; neuralop's Trainer has none). neuralop's Trainer steps its scheduler once per epoch: the peer's
LambdaLR is stepped after every optimizer step by an optimizer hook instead and the Trainer's epoch call is a
no-op; the peer trains one Trainer epoch over the ``steps`` batches (shuffle off: the plan's order). Checked
before training: parameter values (complex weights count twice on both sides), initial weights, optimizer
groups and the per-step learning rates against sciscale's own builders (trainers/optimizers.py).

Configurations, in a rotated order per repeat (seed = repeat on both sides): the peer (one process, 2 torch
threads), sciscale 1 worker x 2 CPUs (ZeRO-0, micro batch = global batch) and 2 workers x 1 CPU (ZeRO-2);
``data.num_workers 0``, ``train.log_every 1``, ``train.eval_every 0``, no checkpoint but the final one.

Figures (benchmarks/peers.py measures both sides the same way): steady-state step time (median after --skip
steps), samples/s, throughput relative to the peer of the same repeat, launch to first step, wall time of the
whole command (sciscale's includes its final evaluation, checkpoint and MLflow model) and the held-out relative
L2 error, mean over val samples of ||pred - y|| / ||y|| on the normalised fields, from one function for both:
the peer's model from its saved state_dict, sciscale's run loaded as `sciscale eval` does (trainers/sources.py
``resolve`` of the run directory: its final MLflow model's weights, then trainers/inference.py ``load_model``).
sciscale's own logged ``val/rel_l1`` (relative L1 %, physical units) is shown beside it."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

ROOT = peers.ROOT
BATCH, LR, WEIGHT_DECAY, BETAS, EPS = 16, 1e-3, 1e-4, (0.9, 0.999), 1e-8
PEER = "neuraloperator Trainer, 1 process x 2 threads"
CONFIGS = {  # name: sciscale --set overrides (None: the peer)
    PEER: None,
    "sciscale, 1 worker x 2 CPUs": ["distributed.workers=1", "distributed.resources_per_worker={CPU: 2}",
                                    "distributed.zero_stage=0", f"train.micro_batch_size={BATCH}"],
    "sciscale, 2 workers x 1 CPU, ZeRO-2": ["distributed.workers=2", "distributed.resources_per_worker={CPU: 1}",
                                            "distributed.zero_stage=2", f"train.micro_batch_size={BATCH // 2}"],
}


def write_spec(work: Path, args) -> Path:
    spec = {
        "name": "peer-pde",
        "model": {"family": "pde", "arch": "fno", "size": args.size, "in_channels": 2,
                  "resolution": args.resolution, "residual": False},
        "data": {"train": [{"url": str(work / "data" / "train")}], "val": [{"url": str(work / "data" / "val")}],
                 "num_workers": 0},
        "optim": {"name": "adamw", "lr": LR, "weight_decay": WEIGHT_DECAY, "betas": list(BETAS), "grad_clip": None,
                  "schedule": {"kind": "cosine", "warmup_steps": args.warmup}},
        "train": {"global_batch_size": BATCH, "micro_batch_size": BATCH, "max_steps": args.steps,
                  "eval_every": 0, "checkpoint_every": 0, "log_every": 1, "seed": 0},
        "tracking": {"experiment": "peer-pde"},
    }
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sciscale_tensors(spec, split: str, steps: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(operator input [n, C + 1, H, W], target) of sciscale's data path: the first ``steps`` global batches of
    the train plan (world size 1), or the val pass without its padding."""
    from data.format import read_manifest
    from data.loader import build_loader
    from models import load_family

    family = load_family("pde")
    sources = spec.data.train if split == "train" else spec.data.val
    transform = [family.make_transform(spec.model, read_manifest(s.url)) for s in sources]
    with build_loader(spec.data, sources, split=split, rank=0, world_size=1, global_batch=BATCH,
                      micro_batch=BATCH, seed=spec.train.seed, transform=transform, collate=family.collate,
                      storage=spec.storage) as loader:
        batches = iter(loader)
        if split == "train":
            batches = [next(batches)[0] for _ in range(steps)]
        else:
            batches = [{k: v[b["_valid"]] for k, v in b.items()} for b in batches]
    xs = [torch.cat([b["x"], b["lead_time"].to(b["x"].dtype).reshape(-1, 1, 1, 1)
                     .expand(-1, 1, *b["x"].shape[-2:])], 1) for b in batches]  # as PdeFNO.forward does
    return torch.cat(xs), torch.cat([b["y"] for b in batches])


def peer_model(size: str, in_channels: int, out_channels: int):
    from neuralop.models import FNO

    from models.pde.config import FNO_SIZES

    s = FNO_SIZES[size]
    return FNO(n_modes=(s["modes"], s["modes"]), in_channels=in_channels, out_channels=out_channels,
               hidden_channels=s["hidden_channels"], n_layers=s["n_layers"])


def peer_optimizer(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith("bias")]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2 or n.endswith("bias")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=BETAS, eps=EPS)


def warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


class PerStepScheduler:
    """A LambdaLR advanced after every optimizer step (an optimizer hook); the Trainer's per-epoch ``step`` is
    ignored."""

    def __init__(self, optimizer, factor):
        self.inner = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        optimizer.register_step_post_hook(lambda *_: self.inner.step())

    def step(self) -> None:
        pass


def real_numel(p: torch.Tensor) -> int:
    return p.numel() * (2 if p.is_complex() else 1)


def check_same(spec) -> dict:
    """Both models, optimizers and schedules against sciscale's builders; raises if they differ."""
    from models import load_family
    from trainers import optimizers

    torch.manual_seed(spec.train.seed)  # as trainers/runner.py does before building the model
    ours = load_family("pde").build_model(spec.model)
    torch.manual_seed(spec.train.seed)
    theirs = peer_model(spec.model.size, spec.model.in_channels + 1, spec.model.out_ch)
    counts = {"sciscale": sum(real_numel(p) for p in ours.parameters()),
              "neuralop": sum(real_numel(p) for p in theirs.parameters())}
    print(f"parameters (real values): sciscale {counts['sciscale']:,}, neuralop {counts['neuralop']:,} "
          f"({sum(p.numel() for p in theirs.parameters()):,} counting each complex weight once)", flush=True)
    state = ours.state_dict()
    for name, value in theirs.state_dict().items():
        if torch.is_tensor(value):
            stored = state.get(f"operator.{name}")
            if stored is None:  # a complex spectral weight: sciscale stores it as real pairs
                stored = torch.view_as_complex(state[f"operator.{name.removesuffix('.tensor')}_ri"])
            if not torch.equal(stored, value):
                raise SystemExit(f"initial weights differ at {name}")

    def groups(opt):
        return sorted((g["weight_decay"], g["lr"], g["eps"], tuple(g["betas"]), sum(map(real_numel, g["params"])))
                      for g in opt.param_groups)

    mine = groups(optimizers.build_optimizer(ours, spec.optim))
    theirs_groups = groups(peer_optimizer(theirs, spec.optim.lr, spec.optim.weight_decay))
    if counts["sciscale"] != counts["neuralop"] or mine != theirs_groups:
        raise SystemExit(f"the models or optimizers differ: parameters {counts}, optimizer groups (weight decay, "
                         f"lr, eps, betas, values) sciscale {mine}, neuralop {theirs_groups}")
    steps = spec.train.max_steps
    ours_lr, theirs_lr = optimizers.lr_lambda(spec.optim, steps), warmup_cosine(spec.optim.schedule.warmup_steps, steps)
    if any(not math.isclose(ours_lr(s), theirs_lr(s)) for s in range(steps + 1)):
        raise SystemExit("the learning-rate schedules differ")
    return {"parameters": counts, "same_init": True, "optimizer_groups": mine}


def peer_child(config_path: str) -> None:
    """The peer: neuralop's Trainer on in-memory tensors; saves the trained state_dict (tensors only)."""
    from neuralop.data.datasets.tensor_dataset import TensorDataset
    from neuralop.training import Trainer

    from models.pde.loss import relative_l1

    cfg = json.loads(Path(config_path).read_text())
    torch.set_num_threads(cfg["threads"])
    data = torch.load(cfg["data"], weights_only=True)
    torch.manual_seed(cfg["seed"])
    model = peer_model(cfg["size"], data["x"].shape[1], data["y"].shape[1])
    optimizer = peer_optimizer(model, cfg["lr"], cfg["weight_decay"])
    scheduler = PerStepScheduler(optimizer, warmup_cosine(cfg["warmup"], cfg["steps"]))
    loader = torch.utils.data.DataLoader(TensorDataset(data["x"], data["y"]), batch_size=cfg["batch"], shuffle=False)

    def loss(out, y, **_):
        return relative_l1(out.float(), y.float(), cfg["groups"]).mean()

    trainer = Trainer(model=model, n_epochs=1, device="cpu", verbose=True)
    trainer.train(loader, {}, optimizer, scheduler, training_loss=loss)
    torch.save({k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}, cfg["out"])


@torch.no_grad()
def rel_l2(predict, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over samples of ||pred - y|| / ||y||, in %."""
    pred = torch.cat([predict(x[i:i + 64]) for i in range(0, len(x), 64)])
    return 100 * float(((pred - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)).mean())


def run_peer(work: Path, spec, run_id: str, args, val) -> dict:
    x, y = sciscale_tensors(spec, "train", args.steps)
    cfg = {"data": str(work / f"{run_id}.data.pt"), "out": str(work / f"{run_id}.state_dict.pt"), "threads": 2,
           "seed": spec.train.seed, "size": args.size, "lr": spec.optim.lr, "weight_decay": spec.optim.weight_decay,
           "warmup": args.warmup, "steps": args.steps, "batch": BATCH, "groups": spec.model.groups}
    torch.save({"x": x, "y": y}, cfg["data"])
    (work / f"{run_id}.json").write_text(json.dumps(cfg))
    figures = peers.clocked([str(Path(__file__).resolve()), "--peer-child", str(work / f"{run_id}.json")],
                            work / f"{run_id}.stamps.json", args.skip, cwd=ROOT, env={"OMP_NUM_THREADS": "2"})
    os.remove(cfg["data"])
    if figures.pop("steps") != args.steps:
        raise SystemExit(f"{run_id}: the peer took a different number of optimizer steps than {args.steps}")
    model = peer_model(args.size, x.shape[1], y.shape[1])
    model.load_state_dict(torch.load(cfg["out"], weights_only=True))
    return {**figures, "rel_l2_pct": rel_l2(model.eval(), *val)}


def run_sciscale(work: Path, spec_path: Path, run_id: str, sets: list[str], args, val) -> dict:
    import mlflow

    from trainers.inference import load_model
    from trainers.sources import resolve

    figures = peers.launch(spec_path, run_id, sets, work, skip=args.skip)
    source = resolve(figures["run_dir"], runs_root=str(work / "runs"), cache_dir=str(work / "cache"))
    if source.step != args.steps:
        raise SystemExit(f"{run_id}: the final model is of step {source.step}, not {args.steps}")
    model = load_model(source)
    metrics = mlflow.MlflowClient(source.mlflow["tracking_uri"]).get_run(source.mlflow["mlflow_run_id"]).data.metrics
    return {**figures, "rel_l2_pct": rel_l2(lambda x: model({"x": x[:, :-1], "lead_time": x[:, -1, 0, 0]}), *val),
            "sciscale_val_rel_l1_pct": metrics.get("val/rel_l1")}


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="debug", help="FNO size (models/pde/config.py FNO_SIZES)")
    ap.add_argument("--n-train", type=int, default=128, help="training trajectories")
    ap.add_argument("--n-val", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps of global batch 16")
    ap.add_argument("--warmup", type=int, help="warmup steps (default: steps / 10)")
    ap.add_argument("--skip", type=int, default=10, help="steps left out of the steady-state step time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="a short check: 1 repeat, 12 steps, 32 trajectories")
    ap.add_argument("--json", help="write every run's figures here")
    ap.add_argument("--peer-child", metavar="CONFIG", help="internal: train the peer (what peers.clocked runs)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_train, args.n_val, args.resolution, args.steps, args.skip, args.repeats = 32, 8, 32, 12, 2, 1
    args.warmup = args.steps // 10 if args.warmup is None else args.warmup
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.peer_child:
        peer_child(args.peer_child)
        return 0
    from orchestrator.specload import load_spec

    work = Path(tempfile.mkdtemp(prefix="sciscale-peer-pde-"))
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "data", "generate", "navier-stokes", "--out",
                    str(work / "data"), "--n-train", str(args.n_train), "--n-val", str(args.n_val), "--resolution",
                    str(args.resolution), "--seed", "0"], cwd=ROOT, check=True, capture_output=True)
    spec_path = write_spec(work, args)
    base = load_spec(spec_path)
    checks = check_same(base)
    val = sciscale_tensors(base, "val")
    print(f"data in {work}: {args.n_train} train / {args.n_val} val trajectories at {args.resolution}^2; "
          f"{args.steps} steps of batch {BATCH}, step time after step {args.skip}\nsciscale spec "
          f"({spec_path}):\n{spec_path.read_text()}per configuration --set: "
          f"{json.dumps({k: v for k, v in CONFIGS.items() if v})} and train.seed=REPEAT\npeer: FNO {args.size}, "
          f"AdamW lr {LR} betas {BETAS} eps {EPS} weight decay {WEIGHT_DECAY} (tensors of >= 2 dims), warmup "
          f"{args.warmup} + cosine per step, relative L1 loss, batch {BATCH}, 1 epoch of {args.steps} steps, "
          f"2 threads\nchecks: {json.dumps(checks)}", flush=True)
    rows, names = [], list(CONFIGS)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            sets, run_id = CONFIGS[name], f"r{repeat}-{names.index(name)}"
            load = os.getloadavg()[0]
            if sets is None:
                figures = run_peer(work, load_spec(spec_path, [f"train.seed={repeat}"]), run_id, args, val)
            else:
                figures = run_sciscale(work, spec_path, run_id, sets + [f"train.seed={repeat}"], args, val)
            rows.append({"config": name, "repeat": repeat, "load_avg_1m": load, **figures})
            print(json.dumps(rows[-1]), flush=True)
    table = summarise(rows, names)
    print_table(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "rows": rows, "checks": checks, "work": str(work),
                                               "spec": yaml.safe_load(spec_path.read_text()),
                                               "sets": CONFIGS, "args": vars(args)}, indent=1))
    return 0


def summarise(rows: list[dict], names: list[str]) -> list[dict]:
    peer = {r["repeat"]: r for r in rows if r["config"] == PEER}
    table = []
    for name in names:
        mine = [{**r, "samples_per_s": BATCH / r["step_s"], "vs_peer": peer[r["repeat"]]["step_s"] / r["step_s"]}
                for r in rows if r["config"] == name]
        keys = ["step_s", "samples_per_s", "vs_peer", "first_step_s", "wall_s", "rel_l2_pct", "load_avg_1m"]
        if name != PEER:
            keys.append("sciscale_val_rel_l1_pct")
        table.append({"config": name, **{k: peers.median_of(mine, k) for k in keys}})
    return table


def print_table(table: list[dict]) -> None:
    columns = [("step_s", "step ms", 1000, ".0f"), ("samples_per_s", "samples/s", 1, ".0f"),
               ("vs_peer", "throughput vs peer (per repeat)", 1, ".2f"), ("first_step_s", "launch to first step s", 1,
               ".1f"), ("wall_s", "wall s", 1, ".0f"), ("rel_l2_pct", "held-out rel. L2 %", 1, ".2f"),
               ("sciscale_val_rel_l1_pct", "sciscale val/rel_l1 %", 1, ".2f"), ("load_avg_1m", "load avg", 1, ".1f")]
    print("\nmedian (min-max) over repeats\n\n| configuration | " + " | ".join(c[1] for c in columns) + " |\n|---"
          + "|---" * len(columns) + "|")
    for row in table:
        cells = [f"{row[k][0] * s:{f}} ({row[k][1] * s:{f}}-{row[k][2] * s:{f}})" if k in row else "-"
                 for k, _, s, f in columns]
        print(f"| {row['config']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
