"""The registry of task estimators: task name -> estimator class, and what it serves.

A leaf of the tasks package: it imports no estimator. ``headstart.tasks`` registers the
built-in ones when the package loads (importing this module loads the package first), so
the serving half (``inference``, ``predict``, ``export``, ``serve``, the task objects) can
look a run's task up here without importing every estimator module and closing a cycle.
"""

from __future__ import annotations

from typing import Any

# type[Any]: TransferEstimator subclasses (task, serving_class, load, ...), which this leaf
# does not import
ESTIMATORS: dict[str, type[Any]] = {}


def register(cls: type[Any]) -> type[Any]:
    """Add an estimator class under its ``task`` name; a name already taken raises."""
    if cls.task in ESTIMATORS:
        raise ValueError(
            f"a task named {cls.task!r} is already registered ({ESTIMATORS[cls.task].__name__})"
        )
    ESTIMATORS[cls.task] = cls
    return cls


def estimator_class(task: str, where="") -> type[Any]:
    """The estimator class of a task name (a run's config.json ``task``)."""
    if task not in ESTIMATORS:
        raise ValueError(
            f"{where}: unknown task {task!r}"
            if where
            else f"unknown task {task!r}; one of {', '.join(ESTIMATORS)}"
        )
    return ESTIMATORS[task]


def run_task(run_dir) -> type[Any]:
    """The estimator class of the run in ``run_dir``, or of a registered source model that
    does its task as it is (``packaged:nanodet-coco``: zero-shot detection)."""
    from ..zoo import source_task
    from ..zoo.local import read_run_config

    task = source_task(str(run_dir))
    if task is not None:
        return estimator_class(task)
    return estimator_class(read_run_config(run_dir).get("task", "image"), run_dir)


def serving_for(task: str, where=""):
    """The serving half of a task name (:mod:`headstart.tasks.serving`)."""
    return estimator_class(task, where).serving_class()


def load_estimator(run_dir, device: str = "cpu"):
    """The fitted estimator of a run directory, whatever its task."""
    return run_task(run_dir).load(run_dir, device=device)
