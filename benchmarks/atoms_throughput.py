"""Training and inference throughput (atoms/s) of EScAIP against MACE on the same structures, in one run.

    OMP_NUM_THREADS=2 python benchmarks/atoms_throughput.py --data runs/data/emt/val \
        [--escaip-weights W1 --escaip-spec S1 --mace-weights W2 --mace-spec S2]

Both models see identical micro-batches (the first structures of --data, neighbour lists built once).
Without weights the debug sizes are timed from a fresh initialisation; with the weights of trained runs
the held-out force MAE is printed beside the speed so that speed is compared at known accuracy.
Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _structures(url: str, count: int) -> list[dict]:
    from data.format import open_shard, read_manifest

    manifest = read_manifest(url)
    out = []
    for shard in manifest.shards:
        view = open_shard(f"{url}/{shard.key}", manifest.fields)
        out += [{k: np.array(v) for k, v in view.sample(i).items()} for i in range(view.num_samples)]
        if len(out) >= count:
            break
    return out[:count]


def _model(arch: str, weights: str | None, spec_path: str | None, cutoff: float, max_neighbors: int):
    from models.atoms import build_model
    from models.atoms.calculator import load_model_spec
    from models.atoms.config import AtomsModelSpec

    if spec_path:
        spec = load_model_spec(spec_path)
    else:
        extra = {"elements": ["Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"]} if arch == "mace" else {}
        spec = AtomsModelSpec(family="atoms", arch=arch, cutoff=cutoff, max_neighbors=max_neighbors, **extra)
    model = build_model(spec)
    if weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(weights))
    return model, spec


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, spec, batches: list[dict], repeats: int) -> dict:
    from models.atoms import loss, metrics

    atoms = sum(int(b["n_atoms"].sum()) for b in batches)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train():
        model.train()
        for b in batches:
            opt.zero_grad()
            loss(model(b), b, spec).backward()
            opt.step()

    def infer():
        model.eval()
        for b in batches:
            model(b)

    t_infer = _time(infer, repeats)
    model.eval()
    maes = [metrics(model(b), b, spec)["force_mae_mev_a"] for b in batches]
    t_train = _time(train, repeats)
    return {"params": sum(p.numel() for p in model.parameters()), "infer_atoms_s": atoms / t_infer,
            "train_atoms_s": atoms / t_train, "force_mae": float(torch.cat(maes).mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset URL (e.g. the validation set)")
    parser.add_argument("--structures", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cutoff", type=float, default=4.0)
    parser.add_argument("--max-neighbors", type=int, default=24)
    for arch in ("escaip", "mace"):
        parser.add_argument(f"--{arch}-weights")
        parser.add_argument(f"--{arch}-spec")
    args = parser.parse_args(argv)
    from models.atoms.batch import AtomsTransform, collate

    torch.manual_seed(0)
    models = {arch: _model(arch, getattr(args, f"{arch}_weights"), getattr(args, f"{arch}_spec"), args.cutoff,
                           args.max_neighbors) for arch in ("escaip", "mace")}
    cutoffs = {(s.cutoff, s.max_neighbors) for _, s in models.values()}
    if len(cutoffs) != 1:
        print(f"note: the models use different (cutoff, max_neighbors) {sorted(cutoffs)}; each gets its own lists")
    structures = _structures(args.data, args.structures)
    print(f"{'model':<8}{'params':>10}{'infer atoms/s':>15}{'train atoms/s':>15}{'force MAE meV/A':>17}")
    for arch, (model, spec) in models.items():
        transform = AtomsTransform(spec.cutoff, spec.max_neighbors)
        examples = [transform(s) for s in structures]
        batches = [collate(examples[i:i + args.micro_batch]) for i in range(0, len(examples), args.micro_batch)]
        r = measure(model, spec, batches, args.repeats)
        print(f"{arch:<8}{r['params']:>10,}{r['infer_atoms_s']:>15,.0f}{r['train_atoms_s']:>15,.0f}{r['force_mae']:>17.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
