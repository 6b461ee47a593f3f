"""Muon beside AdamW on each family's debug model, under ZeRO 0, 1, 2 and 3, on 2 CPU workers (issue 15).

One `sciscale sweep` per family: a grid over the optimizer (AdamW at the example's learning rate; Muon at 0.02
for its matrices and the same AdamW rate for the rest) and distributed.zero_stage, every trial the same steps,
data order and seed. Reports the training loss at the start and after equal steps (the mean of the last three
logged points) per trial, and whether it fell.

    python benchmarks/optimizers.py --steps 150

Figures go to docs/optimizers.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLI = [sys.executable, "-m", "orchestrator.cli"]
FAMILIES = {  # family -> (example spec, AdamW lr)
    "pde": ("examples/pde/ns_debug_scot.yaml", 1e-3),
    "weather": ("examples/weather/climax_debug.yaml", 2e-3),
    "atoms": ("examples/atoms/emt_debug_escaip.yaml", 2e-3),
}


def _data(family: str, work: Path, env: dict) -> tuple[str, str]:
    out = work / "data" / family
    if family == "pde":
        from data.generators.navier_stokes import generate

        generate(str(out), n_train=64, n_val=8, resolution=32, seed=0, progress=False)
        return f"{out}/train", f"{out}/val"
    if family == "atoms":
        for split, num, seed in (("train", 400, 0), ("val", 40, 1)):
            subprocess.run(CLI + ["data", "generate", "emt", "--out", f"{out}/{split}", "--num", str(num), "--seed",
                                  str(seed)], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        return f"{out}/train", f"{out}/val"
    subprocess.run(CLI + ["data", "generate", "shallow-water", "--out", f"{out}.zarr", "--trajectories", "3",
                          "--days", "8"], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    variables = ("geopotential_500,u_component_of_wind_500,v_component_of_wind_500,vorticity_500,2m_temperature,"
                 "10m_wind_speed")
    subprocess.run(CLI + ["data", "convert", "weatherbench2", f"{out}.zarr", "--out", str(out), "--variables",
                          variables, "--train", "2020-01-01:2020-01-20", "--val", "2020-01-20:2020-01-25",
                          "--leads", "6,12,24"], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return f"{out}/train", f"{out}/val"


def _sweep_spec(family: str, work: Path, uri: str, steps: int, train: str, val: str, stages: list[int],
                model: dict) -> Path:
    example, lr = FAMILIES[family]
    raw = yaml.safe_load((ROOT / example).read_text())
    raw["model"].update(model)
    raw["name"] = f"optim-{family}"
    raw["data"].update({"train": [{"url": train}], "val": [{"url": val}], "num_workers": 0})
    raw["train"].update({"max_steps": steps, "log_every": 10, "eval_every": 0, "checkpoint_every": steps,
                         "eval_batches": 2})
    raw["distributed"].update({"workers": 2, "resources_per_worker": {"CPU": 1}})
    if family == "weather":
        raw["model"]["rollout_steps"] = 1  # the converted leads end at 24 h
    raw["storage"] = {"runs_root": str(work / "runs")}
    raw["tracking"] = {"uri": uri, "experiment": "bench-optimizers", "system_metrics_every_s": 0}
    schedule = {"kind": "cosine", "warmup_steps": 10}
    raw["optim"] = {"name": "adamw", "lr": lr, "schedule": schedule}
    raw["sweep"] = {"method": "grid", "metric": "train/loss", "max_concurrent": 1, "parameters": {
        "optim": {"values": [{"name": "adamw", "lr": lr, "schedule": schedule},
                             {"name": "muon", "lr": 0.02, "adam_lr": lr, "schedule": schedule}]},
        "distributed.zero_stage": {"values": stages}}}
    path = work / f"{family}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _losses(uri: str, sweep_id: str) -> list[tuple[str, int, float, float]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bench-optimizers")
    rows = []
    for run in client.search_runs(exp.experiment_id, filter_string=f"tags.`sciscale.sweep_id` = '{sweep_id}' and "
                                  "tags.`sciscale.kind` = 'trial'"):
        history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
        if not history:  # a trial that failed before its first log: say so instead of stopping the table
            print(f"trial {run.info.run_name} {run.info.status} with no train/loss: "
                  f"{run.data.tags.get('sciscale.end_reason', '')[:500]}", flush=True)
            continue
        last = [m.value for m in history[-3:]]
        rows.append((run.data.params.get("optim.name"), int(run.data.params.get("distributed.zero_stage")),
                     history[0].value, sum(last) / len(last)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--families", default="pde,weather,atoms")
    parser.add_argument("--stages", default="0,1,2,3", help="ZeRO stages swept")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="a model field set in every trial, e.g. forces=direct (ZeRO-3 refuses conservative forces)")
    args = parser.parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    model = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.model)}

    from orchestrator import services

    with tempfile.TemporaryDirectory(prefix="sciscale-bench-optim-") as tmp:
        work = Path(tmp)
        server = services.start_mlflow_server(work / "mlflow")
        head = services.start_ray_head(work / "ray", num_cpus=4)
        env = {**os.environ, "RAY_ADDRESS": head.extra["gcs_address"], "DS_ACCELERATOR": "cpu",
               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **services.ray_client_env(head.extra["token_path"])}
        table = []
        try:
            for family in args.families.split(","):
                train, val = _data(family, work, env)
                spec = _sweep_spec(family, work, server.endpoint, args.steps, train, val, stages, model)
                sweep_id = f"optim-{family}"
                log = work / f"{family}.log"
                with open(log, "w") as sink:
                    proc = subprocess.run(CLI + ["sweep", str(spec), "--sweep-id", sweep_id], env=env, cwd=ROOT,
                                          stdout=sink, stderr=subprocess.STDOUT)
                if proc.returncode != 0:
                    raise RuntimeError(f"sweep {family} failed:\n{log.read_text()[-4000:]}")
                rows = [(family, *row) for row in _losses(server.endpoint, sweep_id)]
                print(f"{family}: {sorted(rows)}", flush=True)
                table += rows
        finally:
            head.stop()
            server.stop()
    print(f"\n{args.steps} steps, 2 workers x 1 CPU, global batch 16; train/loss at the first log and the mean "
          "of the last three logs")
    print("| family | ZeRO | AdamW first -> last | Muon first -> last | Muon / AdamW | both fell |")
    print("|---|---|---|---|---|---|")
    for family in dict.fromkeys(r[0] for r in table):
        for stage in range(4):
            got = {r[1]: r for r in table if r[0] == family and r[2] == stage}
            a, m = got.get("adamw"), got.get("muon")
            if a and m:
                print(f"| {family} | {stage} | {a[3]:.4f} -> {a[4]:.4f} | {m[3]:.4f} -> {m[4]:.4f} | "
                      f"{m[4] / a[4]:.3f} | {'yes' if a[4] < a[3] and m[4] < m[3] else 'NO'} |")


if __name__ == "__main__":
    main()
