"""`MLflowLogger`: a run's metrics and hyperparameters in MLflow (optional ``mlflow`` package)."""

from __future__ import annotations

import numbers
import time
from typing import Any

from ._errors import describe

__all__ = ["MLflowLogger"]

_HINT = "HINT: pip install mlflow-skinny (or mlflow)"
_PARAM_CHARS = 6000  # MLflow's limit on a param value
_BATCH_PARAMS = 100  # MLflow's limits per log_batch call
_BATCH_METRICS = 1000


def _number(key: str, v: Any) -> float:
    if isinstance(v, numbers.Real):
        return float(v)
    if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        return float(v.item())  # a 0-d tensor passed by hand: one host sync
    raise TypeError(f"metrics[{key!r}]: expected a float or int, got {describe(v)}.")


class MLflowLogger:
    """Log to an MLflow tracking store: each fit run is one MLflow run.

    An adapter on the `functrain.loggers.Logger` protocol: pass it in ``fit(...,
    loggers=[...])`` (with the default loggers too, if wanted:
    ``loggers=[*ft.loggers.default_loggers(run_dir), MLflowLogger(...)]``). ``mlflow`` (or
    ``mlflow-skinny``) is imported when the logger is created, never by functrain's import.

    Hyperparameters become MLflow params (values as strings, cut to MLflow's 6000
    characters). MLflow params cannot change once logged, so on a resumed run (``run_id``)
    a param already recorded keeps its first value and only new ones are added. Metrics are
    logged at their step, in batches (one call per `log_metrics`); names like ``"val/loss"``
    keep their slash. `close` marks the run finished.

    Args:
        experiment: the experiment's name; created if it does not exist.
        run_name: the run's name (MLflow picks one if ``None``).
        tracking_uri: where the store is: ``"sqlite:///mlflow.db"``, ``"http://host:5000"``,
            ``"file:/path/mlruns"`` (MLflow 3 refuses the file store unless
            ``MLFLOW_ALLOW_FILE_STORE=true`` is set); ``None``: MLflow's default
            (``MLFLOW_TRACKING_URI``, else its local default).
        run_id: continue this existing run (e.g. a resumed training run) instead of a new one.
        tags: the run's tags.

    Attributes:
        run_id: the MLflow run's id.
        client: the ``mlflow.tracking.MlflowClient``.

    Raises:
        ImportError: mlflow is not installed (with a hint).
        RuntimeError: the tracking store cannot be opened; says why, with a hint.

    Example:
        >>> import os, tempfile
        >>> os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # doctest: +SKIP
        >>> lg = MLflowLogger("demo", tracking_uri="file:" + tempfile.mkdtemp())  # doctest: +SKIP
        >>> lg.log_hparams({"lr": 1e-3})  # doctest: +SKIP
        >>> lg.log_metrics({"train/loss": 0.5}, step=10)  # doctest: +SKIP
        >>> lg.close()  # doctest: +SKIP
    """

    def __init__(self, experiment: str = "functrain", *, run_name: str | None = None,
                 tracking_uri: str | None = None, run_id: str | None = None,
                 tags: dict[str, Any] | None = None) -> None:
        if not isinstance(experiment, str) or not experiment:
            raise TypeError(f"experiment: expected a non-empty str, got {describe(experiment)}.")
        if tags is not None and not isinstance(tags, dict):
            raise TypeError(f"tags: expected a dict or None, got {describe(tags)}.")
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ImportError(f"MLflowLogger needs the mlflow package, which is not installed "
                              f"({e}). {_HINT}") from e
        self._Metric, self._Param = Metric, Param
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            if run_id is None:
                found = self.client.get_experiment_by_name(experiment)
                exp_id = (found.experiment_id if found is not None
                          else self.client.create_experiment(experiment))
                run = self.client.create_run(exp_id, run_name=run_name,
                                             tags={k: str(v) for k, v in (tags or {}).items()})
            else:
                run = self.client.get_run(run_id)
                for k, v in (tags or {}).items():
                    self.client.set_tag(run_id, k, str(v))
        except Exception as e:
            if isinstance(e, (KeyboardInterrupt, ImportError)):
                raise
            raise RuntimeError(
                f"MLflowLogger: expected to open the tracking store "
                f"{tracking_uri or '(MLflow default)'!r}, got {type(e).__name__}: "
                f"{str(e)[:400]} HINT: a local store is tracking_uri='sqlite:///mlflow.db' "
                "(needs sqlalchemy), or 'file:/path/mlruns' with MLFLOW_ALLOW_FILE_STORE=true "
                "set in the environment.") from e
        self.run_id: str = run.info.run_id
        self._logged_params = dict(run.data.params)
        self._closed = False

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Record ``params`` as MLflow params (strings); ones already on the run are kept."""
        new = [self._Param(str(k)[:250], str(v)[:_PARAM_CHARS]) for k, v in dict(params).items()
               if str(k)[:250] not in self._logged_params]
        for i in range(0, len(new), _BATCH_PARAMS):
            chunk = new[i:i + _BATCH_PARAMS]
            self.client.log_batch(self.run_id, params=chunk)
            self._logged_params.update((p.key, p.value) for p in chunk)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record ``metrics`` at ``step`` in one batch (NaN and inf are stored as such).

        Raises:
            TypeError: a value is not a number (names its key).
        """
        stamp = int(time.time() * 1000)
        rows = [self._Metric(k, _number(k, v), stamp, int(step)) for k, v in metrics.items()]
        for i in range(0, len(rows), _BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=rows[i:i + _BATCH_METRICS])

    def close(self) -> None:
        """Mark the run finished (safe to call twice)."""
        if not self._closed:
            self._closed = True
            self.client.set_terminated(self.run_id, "FINISHED")
