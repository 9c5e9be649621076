"""Planning: which remote files go where, what is already here, and what may be replaced."""

from .planning import Plan, PlannedFile, TaskLayout, files_in_flight, layout_of, plan_files

__all__ = ["Plan", "PlannedFile", "TaskLayout", "files_in_flight", "layout_of", "plan_files"]
