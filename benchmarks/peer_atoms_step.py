"""One MACE training step, in one process: mace-torch's own `take_step` against sciscale's step on the same
structures, alternating. It separates the cost of sciscale's step code from that of a launch (Ray, the
process layout) that benchmarks/peer_atoms.py measures as a whole.

    python benchmarks/peer_atoms_step.py --repeats 5

The same 50 batches of 16 EMT structures (peer_atoms.py's data and model: the model file a one-epoch
`mace_run_train` writes with peer_atoms.py's flags; sciscale's MACE of the same configuration, built by its
Runner from the converted shards). 2 torch threads. Per repeat and side, the median step time over the 50 batches:
- mace: `mace.tools.train.take_step` (forward, loss, backward, gradient clipping, AdamW with AMSGrad) on mace's
  `AtomicData` batches;
- plain: sciscale's model and loss on sciscale's collated batches, torch AdamW and clipping, no DeepSpeed;
- deepspeed: the same through the DeepSpeed engine (ZeRO-0, 1 rank, gloo);
- runner: sciscale's `Runner._train_step` (what a worker runs each step, the finite-loss check included), fed the
  collated batches instead of its loader."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_atoms  # noqa: E402

BATCHES = 50


def _timed(step, batches) -> float:
    times = []
    for batch in batches:
        started = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29535", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                      DS_ACCELERATOR="cpu", OMP_NUM_THREADS="2")
    import ase.io
    import torch
    import torch.distributed as dist
    import yaml

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="sciscale-peer-step-"))
    attrs = peer_atoms.write_data(work, {"train": BATCHES * peer_atoms.BATCH, "val": 50}, seed=0)
    subprocess.run([sys.executable, *peer_atoms.mace_argv(work, "peer", attrs, 1, 0)], cwd=work, check=True,
                   capture_output=True)
    frames = ase.io.read(work / "train.xyz", ":")

    # mace's side: its model file, its batches, loss and step
    from mace import data as mdata
    from mace import tools
    from mace.data.utils import KeySpecification, config_from_atoms
    from mace.modules.loss import WeightedEnergyForcesLoss
    from mace.tools import torch_geometric

    mace_train = importlib.import_module("mace.tools.train")  # `mace.tools.train` the attribute is a function
    peer = torch.load(work / "peer" / "peer.model", weights_only=False).float().train()
    z_table = tools.AtomicNumberTable([int(z) for z in peer.atomic_numbers])
    keys = KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})
    data = [mdata.AtomicData.from_config(config_from_atoms(a, key_specification=keys), z_table=z_table,
                                         cutoff=peer_atoms.CUTOFF) for a in frames]
    mace_batches = list(torch_geometric.dataloader.DataLoader(data, batch_size=peer_atoms.BATCH, shuffle=False))
    mace_loss = WeightedEnergyForcesLoss(energy_weight=1.0, forces_weight=10.0)
    mace_opt = torch.optim.AdamW(peer.parameters(), lr=0.01, weight_decay=0.0, amsgrad=True)
    outputs = {"forces": True, "virials": False, "stress": False}

    def mace_step(batch):
        mace_train.take_step(peer, mace_loss, batch, mace_opt, None, outputs, 10.0, torch.device("cpu"))

    # sciscale's side: its Runner (model, DeepSpeed engine, transform) for the same spec peer_atoms.py launches
    from models.atoms.batch import collate
    from orchestrator.specload import validate_spec
    from trainers import optimizers
    from trainers.runner import Runner

    dist.init_process_group("gloo", rank=0, world_size=1)
    raw = yaml.safe_load(peer_atoms.sciscale_spec(work, attrs, "mace", 1, 10_000, 0).read_text())
    raw["train"]["profile_steps"] = 0
    raw["storage"] = {"runs_root": str(work / "runs")}
    spec = validate_spec(raw)
    runner = Runner(spec, {}, 0, 1)
    transform, family = runner.transform[0], runner.family
    examples = [transform({"positions": a.positions, "numbers": a.numbers, "cell": np.asarray(a.cell), "pbc": a.pbc,
                           "energy": np.float64(a.info["REF_energy"]), "forces": a.arrays["REF_forces"]})
                for a in frames]
    ours = [collate(examples[i:i + peer_atoms.BATCH]) for i in range(0, len(examples), peer_atoms.BATCH)]
    model, engine = runner.engine.module, runner.engine
    plain_opt = optimizers.build_optimizer(model, spec.optim, False, family.muon_adamw)

    def plain_step(batch):
        loss = family.loss(model(batch), batch, spec.model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)
        loss.item()

    def engine_step(batch):
        loss = family.loss(engine(batch), batch, spec.model)
        engine.backward(loss)
        engine.step()
        loss.item()

    feed = iter([])

    def runner_step(batch):
        nonlocal feed
        feed = iter([[batch]])
        runner._train_step(feed)

    sides = {"mace": (mace_step, mace_batches), "plain": (plain_step, ours), "deepspeed": (engine_step, ours),
             "runner": (runner_step, ours)}
    for step, batches in sides.values():  # warm-up
        _timed(step, batches[:5])
    rows = []
    print(f"{BATCHES} batches of {peer_atoms.BATCH}; load average {os.getloadavg()[0]:.1f}", flush=True)
    for repeat in range(args.repeats):
        names = list(sides)[repeat % len(sides):] + list(sides)[:repeat % len(sides)]
        row = {name: _timed(*sides[name]) for name in names}
        rows.append(row)
        print(f"repeat {repeat}: " + ", ".join(f"{n} {1000 * row[n]:.1f} ms ({row['mace'] / row[n]:.2f}x)"
                                                for n in sides), flush=True)
    print("\n| side | step ms, median (min-max) | throughput vs mace per repeat: median (min-max) |\n|---|---|---|")
    for name in sides:
        values = [r[name] for r in rows]
        ratios = [r["mace"] / r[name] for r in rows]
        print(f"| {name} | {1000 * statistics.median(values):.1f} ({1000 * min(values):.1f}-{1000 * max(values):.1f}) "
              f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    print(json.dumps({"rows": rows, "load_avg_end": os.getloadavg()}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
