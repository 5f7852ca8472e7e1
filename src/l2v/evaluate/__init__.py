"""Evaluation: MTEB-style tasks on local files, the paper's word-level probes, an mteb adapter and reports."""

from .models import EvalModel
from .runner import run_evaluation
from .tasks import FAMILIES, TaskOptions, default_tasks, select_tasks, user_task

__all__ = ["EvalModel", "run_evaluation", "FAMILIES", "TaskOptions", "default_tasks", "select_tasks", "user_task"]
