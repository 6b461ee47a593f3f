"""WeatherBench2 score table of a finished weather run, read from MLflow.

    python benchmarks/weather_scores.py RUN_ID [--tracking-uri sqlite:///runs/mlflow.db]

RMSE is the square root of the logged time-mean area-weighted MSE (``val/wmse/...``); ACC is logged as is.
"""

from __future__ import annotations

import argparse
import math
import re


def table(metrics: dict[str, float]) -> list[str]:
    """Rows: variable, lead, RMSE of model / persistence / climatology, ACC of model / persistence."""
    rows = [f"{'variable':28} {'lead':>5} {'model':>11} {'persist.':>11} {'climat.':>11} {'ratio':>6} "
            f"{'ACC':>6} {'ACC pers.':>9}"]
    keys = sorted({m.group(1, 2) for k in metrics if (m := re.fullmatch(r"val/wmse_persistence/(.+)/(\d+)h", k))},
                  key=lambda x: (x[0], int(x[1])))
    for var, lead in keys:
        get = lambda name: metrics.get(f"val/{name}/{var}/{lead}h", math.nan)  # noqa: E731
        model, pers, clim = (math.sqrt(get(n)) for n in ("wmse", "wmse_persistence", "wmse_climatology"))
        rows.append(f"{var:28} {lead + 'h':>5} {model:>11.4g} {pers:>11.4g} {clim:>11.4g} {model / pers:>6.3f} "
                    f"{get('acc'):>6.3f} {get('acc_persistence'):>9.3f}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_id")
    p.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    args = p.parse_args()
    from mlflow.tracking import MlflowClient

    run = MlflowClient(args.tracking_uri).get_run(args.run_id)
    print("\n".join(table(run.data.metrics)))


if __name__ == "__main__":
    main()
