"""MLflow: one experiment (default: the study name), a parent run for the study (the
spec and the report's figures as artifacts) and a child run per width (its scalars).

Runs are found again by their tag ``widthwise.run`` (``<study>:<spec hash>:study`` or
``...:w<width>``), and a metric value is logged only at steps its run does not hold
yet, so mirroring twice stores every value once. Figures are artifacts
``figures/<name>.png`` of the study run, replaced when mirrored again.

The default store is a file store ``<study>/mlruns``; MLflow 3 refuses file stores
unless ``MLFLOW_ALLOW_FILE_STORE=true``, which is set while mirroring (and needed by
``mlflow ui`` for that store too). A ``sqlite:///`` URI needs the full ``mlflow``
package (mlflow-skinny has no SQLAlchemy).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, field_validator

from widthwise.errors import UserError
from widthwise.trackers import TRACKERS
from widthwise.trackers.base import Tracker, TrackerOptions

RUN_TAG = "widthwise.run"
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
BATCH = 1000  # MLflow's limit of metrics per log_batch call


class MlflowOptions(TrackerOptions):
    package = "mlflow"
    extra = "mlflow"

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI or a store path (default: a file store mlruns/ in "
        "the study dir; relative paths are relative to the study dir)",
    )
    experiment: str | None = Field(None, description="experiment name (default: the study name)")

    @field_validator("tracking_uri")
    @classmethod
    def _database_needs_sqlalchemy(cls, v: str | None) -> str | None:
        scheme = urlparse(v).scheme.split("+")[0] if v else ""
        if scheme in DB_SCHEMES and (
            importlib.util.find_spec("sqlalchemy") is None
            or importlib.util.find_spec("alembic") is None
        ):
            raise UserError(
                f"tracking_uri {v!r} needs the full mlflow package (SQLAlchemy): "
                "pip install mlflow; or use the default file store"
            )
        return v


@contextlib.contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses file stores unless MLFLOW_ALLOW_FILE_STORE is set: set it meanwhile."""
    if urlparse(uri).scheme != "file" or os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


@TRACKERS.register(
    "mlflow",
    options=MlflowOptions,
    description="MLflow: a study run with a child run per width (extra: mlflow)",
)
class MlflowTracker(Tracker):
    """MLflow: a study run with a child run per width, in one experiment."""

    Options = MlflowOptions
    options: MlflowOptions

    @property
    def tracking_uri(self) -> str:
        """The store URI with relative paths resolved against the study directory."""
        uri = self.options.tracking_uri
        if uri is None:
            return self.study.resolve(None, "mlruns").as_uri()
        parsed = urlparse(uri)
        if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or a drive letter)
            return self.study.resolve(uri, "mlruns").as_uri()
        if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and uri[10:11] != "/":
            return "sqlite:///" + str(self.study.resolve(uri[10:], "mlflow.db"))
        return uri

    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def _experiment_id(self, client: Any) -> str:
        name = self.options.experiment or self.study.name
        exp = client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None else client.create_experiment(name)

    def _run(
        self, client: Any, exp_id: str, part: str, name: str, tags: dict[str, str]
    ) -> tuple[str, bool]:
        """(run id, created) of the run tagged for ``part``, created when missing."""
        key = f"{self.study.name}:{self.study.spec_hash}:{part}"
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{RUN_TAG}` = '{key}'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found:
            return found[0].info.run_id, False
        run = client.create_run(exp_id, run_name=name, tags={RUN_TAG: key, **tags})
        return run.info.run_id, True

    def _study_run(self, client: Any, exp_id: str) -> str:
        run_id, created = self._run(
            client, exp_id, "study", self.study.name, {"widthwise.study": self.study.name}
        )
        if created:
            from mlflow.entities import Param

            cfg = self.study.config
            params = [
                Param(k, str(cfg[k])) for k in ("study", "spec_hash", "parameterization", "seeds")
            ]
            client.log_batch(run_id, params=params)
            client.log_artifact(run_id, str(self.study.path / "spec.yaml"))
        return run_id

    def mirror_scalars(self) -> None:
        from mlflow.entities import Metric, Param

        with _file_store_allowed(self.tracking_uri):
            client = self._client()
            exp_id = self._experiment_id(client)
            parent = self._study_run(client, exp_id)
            for ws in self.study.widths:
                run_id, created = self._run(
                    client,
                    exp_id,
                    f"w{ws.width}",
                    f"{self.study.name} w={ws.width}",
                    {
                        "mlflow.parentRunId": parent,
                        "widthwise.study": self.study.name,
                        "widthwise.width": str(ws.width),
                    },
                )
                if created:
                    client.log_batch(
                        run_id,
                        params=[
                            Param("width", str(ws.width)),
                            Param("study", self.study.name),
                            Param("spec_hash", self.study.spec_hash),
                        ],
                    )
                ms = int(time.time() * 1000)
                metrics = []
                for key, values in ws.series.items():
                    have = (
                        set()
                        if created
                        else {m.step for m in client.get_metric_history(run_id, key)}
                    )
                    metrics += [
                        Metric(key, value, ms, step)
                        for step, value in sorted(values.items())
                        if step not in have
                    ]
                for i in range(0, len(metrics), BATCH):
                    client.log_batch(run_id, metrics=metrics[i : i + BATCH])
                if ws.state in ("done", "failed"):
                    client.set_terminated(run_id, "FINISHED" if ws.state == "done" else "FAILED")
            if self.study.all_done:
                client.set_terminated(parent, "FINISHED")

    def mirror_figures(self, pngs: list[Path]) -> None:
        with _file_store_allowed(self.tracking_uri):
            client = self._client()
            parent = self._study_run(client, self._experiment_id(client))
            for p in pngs:
                client.log_artifact(parent, str(p), artifact_path="figures")
