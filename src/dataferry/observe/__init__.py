"""What a run reports: typed events (events.py), the terminal and log display
(progress.py) and the Prometheus endpoint (metrics.py)."""

from .events import ENDED_STATES, ObserverGroup, TaskObserver, TaskState

__all__ = ["ENDED_STATES", "ObserverGroup", "TaskObserver", "TaskState"]
