"""The core: the scheduler, its batching policy, flow control, the quota seam and retries.

Nothing here imports httpx, a protocol or a backend: the scheduler sends through a plain
`Send` callable and asks a `Quota` for permits.
"""

from __future__ import annotations

from .flow import AdaptiveConcurrency, Clock, Cooldown, LearnedRate, Sleep, TokenBucket
from .jobs import Job, Ticket
from .policy import BatchPolicy
from .quota import LocalQuota, Quota
from .retry import DEFAULT_RETRY, RetryPolicy, describe
from .scheduler import Scheduler
from .stats import EndpointStats, ReplicaState, SchedulerStats

__all__ = [
    "DEFAULT_RETRY",
    "AdaptiveConcurrency",
    "BatchPolicy",
    "Clock",
    "Cooldown",
    "EndpointStats",
    "Job",
    "LearnedRate",
    "LocalQuota",
    "Quota",
    "ReplicaState",
    "RetryPolicy",
    "Scheduler",
    "SchedulerStats",
    "Sleep",
    "Ticket",
    "TokenBucket",
    "describe",
]
