"""sciscale's MACE against mace-torch's own trainer (`mace_run_train`) on the same EMT structures, side by side
in one run, alternating; and EScAIP through sciscale on the same data and budget (`--escaip`).

    python benchmarks/peer_atoms.py --repeats 3 --json peer_atoms.json

Data: EMT-labelled structures from sciscale's generator (data/generators/emt.py), written with `ase.io.write` as
extxyz in MACE's layout (REF_energy, REF_forces): train, validation and a held-out test file. mace_run_train
reads the extxyz files; sciscale reads the shards `sciscale data convert extxyz` makes from the same files.

Both sides train the same model: MACE 16x0e+16x1o, 2 interactions, correlation 2, max_ell 2, 8 Bessel functions,
polynomial cutoff 5, r_max 4, residual interaction blocks (first block too), float32, the same per-element
reference energies (sciscale's least-squares fit, passed to mace as --E0s), no scale or shift
(`--model=ScaleShiftMACE --scaling=no_scaling --mean=0.0`), avg_num_neighbors measured by each from the
training data. Same loss (energy per atom and force MSE, weights 1 and 10, no stress), AdamW at a constant
learning rate 0.01 without weight decay, gradient norm clipped at 10, batch 16, the same number of steps.
One known difference: mace_run_train always uses AMSGrad (its flag cannot be turned off); sciscale's AdamW
does not. Each repeat uses its own seed (0, 1, 2, ...) on both sides and runs the configurations in a rotated
order.

Figures (benchmarks/peers.py measures both sides the same way): steady-state step time (median after the first
epoch), launch to first step, wall time of the whole command, and the held-out errors from one evaluation
function for every model (ASE calculators: mace's MACECalculator, sciscale's SciscaleCalculator). Each sciscale
run also profiles steps 11-30 (`train.profile_steps`: data wait, forward, backward, optimizer step, collectives per
rank), which the step time leaves out."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

ROOT = peers.ROOT
BATCH, CUTOFF = 16, 4.0


def write_data(work: Path, sizes: dict[str, int], seed: int) -> dict:
    """extxyz files (ase.io.write) and sciscale shards converted from them; the train manifest's attrs, with
    ``max_neighbors``: the most neighbours any atom of any split has within the cutoff (so sciscale's cap
    drops none, as mace has no cap)."""
    import ase.io

    from data.generators.emt import make_structure

    for offset, (split, num) in enumerate(sizes.items()):
        frames = []
        for i in range(num):
            atoms = make_structure(seed + offset, i)
            atoms.info["REF_energy"] = atoms.get_potential_energy()
            atoms.arrays["REF_forces"] = atoms.get_forces()
            atoms.calc = None
            atoms.info.pop("adsorbate_info", None)
            frames.append(atoms)
        ase.io.write(work / f"{split}.xyz", frames, format="extxyz")
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "data", "convert", "extxyz",
                        str(work / f"{split}.xyz"), "--out", str(work / split)],
                       cwd=ROOT, check=True, capture_output=True)
    attrs = json.loads((work / "train" / "manifest.json").read_text())["attrs"]
    # the cap covers every split (the test split is converted for its neighbour counts only)
    attrs["max_neighbors"] = max(max_neighbors(json.loads((work / s / "manifest.json").read_text())["attrs"])
                                 for s in sizes)
    return attrs


def max_neighbors(attrs: dict) -> int:
    """The most neighbours any atom of a dataset has within the cutoff."""
    counts = attrs["neighbor_counts"]
    return int(counts["max_per_atom"][round(CUTOFF / counts["bin_width"])])


def mace_argv(work: Path, name: str, attrs: dict, epochs: int, seed: int) -> list[str]:
    from ase.data import atomic_numbers

    e0s = {atomic_numbers[s]: e for s, e in attrs["reference_energies"].items()}
    return ["-m", "mace.cli.run_train", f"--name={name}", f"--work_dir={work / name}", f"--seed={seed}",
            f"--train_file={work / 'train.xyz'}", f"--valid_file={work / 'val.xyz'}",
            "--energy_key=REF_energy", "--forces_key=REF_forces", f"--E0s={e0s}",
            "--model=ScaleShiftMACE", "--scaling=no_scaling", "--mean=0.0",
            "--interaction=RealAgnosticResidualInteractionBlock",
            "--interaction_first=RealAgnosticResidualInteractionBlock",
            "--hidden_irreps=16x0e+16x1o", "--num_interactions=2", "--correlation=2", "--max_ell=2",
            "--MLP_irreps=16x0e", "--num_radial_basis=8", "--num_cutoff_basis=5", f"--r_max={CUTOFF}",
            "--default_dtype=float32", "--device=cpu", "--loss=weighted", "--energy_weight=1.0",
            "--forces_weight=10.0", "--optimizer=adamw", "--lr=0.01", "--weight_decay=0.0",
            "--scheduler=ExponentialLR", "--lr_scheduler_gamma=1.0", "--clip_grad=10.0",
            f"--batch_size={BATCH}", f"--valid_batch_size={BATCH}", f"--max_num_epochs={epochs}",
            "--eval_interval=1", "--num_workers=0"]


def sciscale_spec(work: Path, attrs: dict, arch: str, workers: int, steps: int, seed: int) -> Path:
    model = {"family": "atoms", "arch": arch, "size": "debug", "cutoff": CUTOFF,
             "max_neighbors": attrs["max_neighbors"], "stress": False, "energy_weight": 1.0, "force_weight": 10.0, "loss": "mse"}
    if arch == "mace":
        model["elements"] = sorted(attrs["elements"])
    spec = {
        "name": f"peer-{arch}", "model": model,
        "data": {"train": [{"url": str(work / "train")}], "val": [{"url": str(work / "val")}], "num_workers": 0},
        "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0, "grad_clip": 10.0,
                  "schedule": {"kind": "constant", "warmup_steps": 0}},
        "train": {"global_batch_size": BATCH, "micro_batch_size": BATCH // workers, "max_steps": steps,
                  "checkpoint_every": steps, "eval_every": 0, "log_every": 10, "seed": seed,
                  "profile_steps": 20},  # steps 11-30, inside the first epoch that the step time leaves out
        "distributed": {"workers": workers, "zero_stage": 2 if workers > 1 else 0,
                        "resources_per_worker": {"CPU": 2 // workers}},
        "tracking": {"experiment": "peer-atoms"},
    }
    path = work / f"spec-{arch}-{workers}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def held_out_errors(calc, frames) -> dict[str, float]:
    """Energy MAE per atom (meV/atom, mean over structures) and force MAE (meV/A, over every component)."""
    energy, forces = [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        energy.append(abs(atoms.get_potential_energy() - atoms.info["REF_energy"]) / len(atoms))
        forces.append(np.abs(atoms.get_forces() - atoms.arrays["REF_forces"]).ravel())
    return {"energy_mae_mev_atom": 1000 * float(np.mean(energy)),
            "force_mae_mev_a": 1000 * float(np.mean(np.concatenate(forces)))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=1600, help="training structures")
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--test", type=int, default=200, help="held-out structures for the errors")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--escaip", action="store_true", help="also EScAIP (debug) through sciscale, 2 workers")
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args(argv)
    import ase.io
    import torch

    work = Path(tempfile.mkdtemp(prefix="sciscale-peer-atoms-"))
    attrs = write_data(work, {"train": args.train, "val": args.val, "test": args.test}, seed=0)
    test = ase.io.read(work / "test.xyz", ":")
    steps_per_epoch = args.train // BATCH
    steps = steps_per_epoch * args.epochs
    configs = {"mace_run_train (2 threads)": ("peer", 0), "sciscale MACE, 1 worker x 2 CPUs": ("mace", 1),
               "sciscale MACE, 2 workers x 1 CPU, ZeRO-2": ("mace", 2)}
    if args.escaip:
        configs["sciscale EScAIP, 2 workers x 1 CPU, ZeRO-2"] = ("escaip", 2)
    print(f"data in {work}: {args.train} train / {args.val} val / {args.test} test structures, "
          f"{steps} steps of batch {BATCH}; max_neighbors {attrs['max_neighbors']} at r {CUTOFF}", flush=True)
    rows = []
    names = list(configs)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            arch, workers = configs[name]
            run_id = f"{arch}-{workers}-r{repeat}"
            load = os.getloadavg()[0]
            if arch == "peer":
                figures = peers.clocked(mace_argv(work, run_id, attrs, args.epochs, repeat),
                                        work / f"{run_id}.stamps.json", skip=steps_per_epoch, cwd=work,
                                        env={"OMP_NUM_THREADS": "2"})
                from mace.calculators import MACECalculator

                calc = MACECalculator(model_paths=str(work / run_id / f"{run_id}.model"), device="cpu",
                                      default_dtype="float32")
            else:
                spec = sciscale_spec(work, attrs, arch, workers, steps, repeat)
                figures = peers.launch(spec, run_id, [], work, skip=steps_per_epoch)
                from models.atoms.calculator import SciscaleCalculator

                calc = SciscaleCalculator.from_source(figures["run_dir"], runs_root=str(work / "runs"),
                                                      dtype=torch.float32)
            row = {"config": name, "repeat": repeat, "load_avg_1m": load, **figures, **held_out_errors(calc, test)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows, names)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "steps": steps, "work": str(work)}, indent=1))
    return 0


def print_table(rows: list[dict], names: list[str]) -> None:
    peer = {r["repeat"]: r for r in rows if r["config"] == names[0]}
    print("\n| | step ms, median (min-max) | throughput vs the peer, per repeat: median (min-max) | launch to first "
          "step s | wall s | energy MAE meV/atom | force MAE meV/A | load avg |\n|---|---|---|---|---|---|---|---|")
    for name in names:
        mine = [r for r in rows if r["config"] == name]
        step = peers.median_of(mine, "step_s")
        ratio = [peer[r["repeat"]]["step_s"] / r["step_s"] for r in mine]
        cells = [f"{1000 * step[0]:.0f} ({1000 * step[1]:.0f}-{1000 * step[2]:.0f})",
                 f"{statistics.median(ratio):.2f}x ({min(ratio):.2f}-{max(ratio):.2f})"]
        for key, fmt in (("first_step_s", ".1f"), ("wall_s", ".0f"), ("energy_mae_mev_atom", ".1f"),
                         ("force_mae_mev_a", ".1f")):
            m, lo, hi = peers.median_of(mine, key)
            cells.append(f"{m:{fmt}} ({lo:{fmt}}-{hi:{fmt}})")
        loads = [r["load_avg_1m"] for r in mine]
        cells.append(f"{min(loads):.1f}-{max(loads):.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for row in rows:
        for text in row.get("profile", []):
            print(f"{row['config']}, repeat {row['repeat']}: {text}")


if __name__ == "__main__":
    sys.exit(main())
