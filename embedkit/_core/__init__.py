"""The core: the scheduler, its batching policy, flow control, the quota seam and retries.

Nothing here imports httpx, a protocol or a backend: the scheduler sends through a plain
`Send` callable and asks a `Quota` for permits.
"""

from __future__ import annotations

from .flow import AdaptiveConcurrency, Clock, Cooldown, LearnedRate, Sleep, TokenBucket
from .jobs import Job, Ticket
from .policy import BatchPolicy
from .quota import LocalQuota, Quota, ServerBudget
from .retry import DEFAULT_RETRY, RetryPolicy, describe
from .scheduler import Scheduler
from .stats import EndpointStats, ReplicaState, SchedulerStats
from .tokens import (
    OVERFLOWS,
    AskTokens,
    CountTokens,
    Overflow,
    TokenBook,
    TokenCounting,
    Tokenizer,
    book_for,
    combine,
    token_bucket,
)

__all__ = [
    "DEFAULT_RETRY",
    "OVERFLOWS",
    "AdaptiveConcurrency",
    "AskTokens",
    "BatchPolicy",
    "Clock",
    "Cooldown",
    "CountTokens",
    "EndpointStats",
    "Job",
    "LearnedRate",
    "LocalQuota",
    "Overflow",
    "Quota",
    "ReplicaState",
    "RetryPolicy",
    "Scheduler",
    "SchedulerStats",
    "ServerBudget",
    "Sleep",
    "Ticket",
    "TokenBook",
    "TokenBucket",
    "TokenCounting",
    "Tokenizer",
    "book_for",
    "combine",
    "describe",
    "token_bucket",
]
