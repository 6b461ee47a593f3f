"""Rank 0: sciscale models as MLflow 3 LoggedModels, linked to the run, the step and the datasets.

Each model is made through the client API (never a fluent ``start_run``, which would end the run: the driver
owns the run's status): ``create_logged_model`` with the run as its source, ``log_outputs`` with the step,
the artifacts of docs/contracts.md, the step's metrics linked to the model and to the datasets they were
computed on (``train/`` the train dataset, ``val/`` the val dataset: that is how the MLflow UI lists a model's
datasets), then ``finalize_logged_model`` READY (FAILED if an upload broke off).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time

from orchestrator import lineage, registry
from orchestrator.specload import flatten, redact
from trainers import weights


class ModelLogger:
    """The final model (``log``) and, with tracking.log_checkpoints_as_models, one per checkpoint
    (``log_in_background``: the step only waits for the fp32 gather)."""

    def __init__(self, metrics, spec, run: dict, build_model, datasets: list[lineage.DatasetRef]):
        self.metrics, self.client, self.spec, self.run = metrics, metrics.client, spec, run
        self.build_model, self.datasets = build_model, datasets
        self.mlflow_run_id = run["mlflow_run_id"]
        self._experiment_id: str | None = None
        self._requirements: list[str] | None = read_requirements(spec.model)
        self._thread: threading.Thread | None = None

    def log(self, state: dict, step: int, kind: str = "final", points: list | None = None) -> str | None:
        """Log one model of ``step``; returns its model id (None if this run already has that model). The
        final model waits for a checkpoint's model still uploading, so every model is complete when it returns."""
        if kind == "final":
            self.wait()
        if self._logged(step, kind):
            print(f"{kind} model of step {step} is already logged (an earlier attempt); not logged again", flush=True)
            return None
        points = self.metrics.points_at(step) if points is None else points
        model = self.client.create_logged_model(
            self.experiment_id, name=registry.FINAL_NAME if kind == "final" else f"checkpoint-{step}",
            source_run_id=self.mlflow_run_id, tags=self._tags(step, kind), model_type="sciscale",
            params={k: v[:6000] for k, v in flatten(self.spec.model_dump(mode="json")).items()})
        try:
            from mlflow.entities import LoggedModelOutput

            self.client.log_outputs(self.mlflow_run_id, [LoggedModelOutput(model.model_id, step=step)])
            self._upload(model, state, step, kind)
            self._link(model.model_id, points)
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        print(f"logged {kind} model {model.model_id} of step {step}", flush=True)
        return model.model_id

    def log_in_background(self, state: dict, step: int) -> None:
        """A checkpoint's model, uploaded by a thread; waits for the previous one first. A failure is reported
        and does not stop training (the checkpoint itself is unaffected)."""
        self.wait()
        points = self.metrics.points_at(step)

        def work() -> None:
            try:
                self.log(state, step, "checkpoint", points)
            except Exception as exc:  # noqa: BLE001 - a lost checkpoint model must not fail the run
                print(f"checkpoint model of step {step} not logged: {type(exc).__name__}: {exc}", flush=True)

        self._thread = threading.Thread(target=work, name=f"mlflow-model-{step}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    close = wait

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self.client.get_run(self.mlflow_run_id).info.experiment_id
        return self._experiment_id

    def _tags(self, step: int, kind: str) -> dict[str, str]:
        return {registry.RUN_TAG: str(self.run.get("run_id")), registry.KIND_TAG: kind,
                registry.STEP_TAG: str(step), "sciscale.family": self.spec.model.family,
                "sciscale.format": str(registry.FORMAT)}

    def info(self, step: int) -> dict:
        """sciscale.json (docs/contracts.md)."""
        return {"format": registry.FORMAT, "spec": redact(self.spec.model_dump(mode="json")), "step": step,
                "run_id": self.run.get("run_id"), "mlflow_run_id": self.mlflow_run_id,
                "family": self.spec.model.family}

    def _logged(self, step: int, kind: str) -> bool:
        from mlflow.entities import LoggedModelStatus

        found = self.client.search_logged_models([self.experiment_id], filter_string=(
            f"source_run_id = '{self.mlflow_run_id}' AND tags.`{registry.KIND_TAG}` = '{kind}' AND "
            f"tags.`{registry.STEP_TAG}` = '{step}'"))
        return any(m.status == LoggedModelStatus.READY for m in found)  # a broken-off upload does not count

    def _upload(self, model, state: dict, step: int, kind: str) -> None:
        from mlflow.models import Model

        with tempfile.TemporaryDirectory() as tmp:
            directory = os.path.join(tmp, "model")
            meta = Model(artifact_path=model.artifact_location, model_uuid=model.model_id,
                         run_id=self.mlflow_run_id, model_id=model.model_id)
            weights.write_model(state, self.build_model, self.spec.model, directory, meta, self._requirements)
            with open(os.path.join(directory, registry.INFO_FILE), "w") as f:
                json.dump(self.info(step), f, indent=2)
            if self._requirements is None:
                with open(os.path.join(directory, "requirements.txt")) as f:
                    self._requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]
                save_requirements(spec_model=self.spec.model, requirements=self._requirements)
            self.client.log_model_artifacts(model.model_id, directory)
            if kind == "final":  # runs:/RUN_ID/weights.safetensors: init_from, the ASE calculator, benchmarks
                self.client.log_artifact(self.mlflow_run_id, os.path.join(directory, registry.WEIGHTS_FILE))

    def _link(self, model_id: str, points: list) -> None:
        """The step's metric points again, now naming the model and their dataset. Same key, value, timestamp
        and step, so the run keeps one point (MLflow drops the duplicate) and the model gets it."""
        from mlflow.entities import Metric

        linked = []
        for m in points:
            ref = lineage.link(self.datasets, m.key)
            linked.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=self.mlflow_run_id,
                                 dataset_name=ref.name if ref else None, dataset_digest=ref.digest if ref else None))
        for i in range(0, len(linked), 1000):
            for attempt in range(4):
                try:
                    self.client.log_batch(self.mlflow_run_id, metrics=linked[i:i + 1000])
                    break
                except Exception as exc:  # noqa: BLE001 - see below
                    # The metric uploader may be sending the same points at this moment: MLflow's SQL store
                    # drops a duplicate only once the other insert has committed, and two concurrent ones fail
                    # with a UNIQUE-constraint BAD_REQUEST. Sent again, the duplicate is found and dropped.
                    if attempt == 3:
                        print(f"could not link {len(linked[i:i + 1000])} metric points to model {model_id}: "
                              f"{type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    else:
                        time.sleep(0.5 * 2 ** attempt)


# MLflow infers a model's pip requirements by loading it in a subprocess and listing what it imported: 13 s
# a model on a 2-core machine (0.07 s with the list given). The answer depends only on the model's code and the
# installed packages, so it is kept on disk per family and arch, keyed by the environment and the models
# package, and inferred again when either changes.
REQUIREMENTS_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "sciscale", "requirements")


def _requirements_path(model_spec) -> str:
    import hashlib
    import sys
    import sysconfig

    purelib = sysconfig.get_paths()["purelib"]
    models_dir = str(weights.MODELS_DIR)
    code = max((os.stat(os.path.join(d, f)).st_mtime_ns for d, _, files in os.walk(models_dir) for f in files
                if f.endswith(".py")), default=0)
    key = f"{sys.prefix}|{purelib}|{os.stat(purelib).st_mtime_ns}|{models_dir}|{code}|{model_spec.family}|" \
          f"{model_spec.arch}"
    return os.path.join(REQUIREMENTS_CACHE, hashlib.sha256(key.encode()).hexdigest()[:20] + ".txt")


def read_requirements(model_spec) -> list[str] | None:
    """The requirements MLflow inferred for this family and arch in this environment, or None."""
    try:
        with open(_requirements_path(model_spec)) as f:
            return [line.strip() for line in f if line.strip()] or None
    except OSError:
        return None


def save_requirements(spec_model, requirements: list[str]) -> None:
    path = _requirements_path(spec_model)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(requirements) + "\n")
        os.replace(tmp, path)
    except OSError:  # a read-only home: inferred again next time
        pass


class NullModelLogger:
    """Ranks other than 0 (and runs without MLflow) log no models."""

    def log(self, state, step: int, kind: str = "final", points=None) -> None:
        pass

    def log_in_background(self, state, step: int) -> None:
        pass

    def wait(self) -> None:
        pass

    close = wait


def build_model_logger(metrics, spec, run: dict, build_model, datasets):
    from trainers.tracking import MetricLogger

    if isinstance(metrics, MetricLogger):
        return ModelLogger(metrics, spec, run, build_model, datasets)
    return NullModelLogger()
