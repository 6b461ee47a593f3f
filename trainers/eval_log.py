"""An evaluation in MLflow: one run per `sciscale eval` in the model's experiment, its scores linked to the
model (MLflow 3: metrics carry the model id and the dataset), the table and the figures as artifacts."""

from __future__ import annotations

import time


def log_evaluation(source, given: str, url: str, manifest, report) -> str:
    """Log ``report`` (an EvalReport of ``source`` on the dataset at ``url``); returns where to look."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelInput, Metric

    from orchestrator.lineage import dataset_input, dataset_ref
    from orchestrator.runs import tracking_uri

    uri = source.mlflow.get("tracking_uri") or tracking_uri(source.spec)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(source.spec.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        source.spec.tracking.experiment)
    ref = dataset_ref("eval", url, manifest)
    tags = {"sciscale.kind": "evaluation", "sciscale.eval.source": given, "sciscale.eval.data": url,
            "sciscale.family": source.spec.model.family}
    if source.mlflow.get("mlflow_run_id"):
        tags["sciscale.eval.of_run"] = source.mlflow["mlflow_run_id"]
    run = client.create_run(experiment_id, run_name=f"eval {source.label} on {ref.name}", tags=tags)
    run_id, model_id = run.info.run_id, source.mlflow.get("model_id")
    client.log_inputs(run_id, datasets=[dataset_input(ref, manifest)],
                      models=[LoggedModelInput(model_id)] if model_id else None)
    now, step = int(time.time() * 1000), source.step or 0
    metrics = [Metric(f"eval/{k}", float(v), now, step, model_id=model_id, dataset_name=ref.name,
                      dataset_digest=ref.digest) for k, v in report.scores.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.log_table(run_id, {c: [row.get(c) for row in report.table] for c in report.columns},
                     "eval/scores.json")
    import matplotlib.pyplot as plt

    for name, figure in report.figures.items():
        client.log_figure(run_id, figure, f"eval/{name}.png")
        plt.close(figure)
    client.set_terminated(run_id, "FINISHED")
    page = f"/#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith("http"):
        return f"run {run_id} in experiment {experiment_id}: {uri.rstrip('/')}{page}"
    return f"run {run_id} in experiment {experiment_id}: http://127.0.0.1:5000{page} (serve {uri} with `sciscale ui`)"
