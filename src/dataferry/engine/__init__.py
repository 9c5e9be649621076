"""Executes a plan from a Source to a Sink: retries, the worker pool, pipelined copies,
extraction while downloading, and recording results in the manifest."""

from .run import TaskReport, run_task

__all__ = ["TaskReport", "run_task"]
