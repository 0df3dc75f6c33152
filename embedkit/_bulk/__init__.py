"""Bulk work: the one streaming loop, `embed_file` and its corpus readers, sinks, resume state
and progress.
"""

from __future__ import annotations

from .corpus import FORMATS, CorpusError, ResumeState, guess_format
from .files import FileResult, Words, aembed_file, embed_file, run_file
from .progress import FileProgress, ProgressLines, progress_bar
from .stream import astream, default_depth, embed_each, encode, stream_blocking

__all__ = [
    "FORMATS",
    "CorpusError",
    "FileProgress",
    "FileResult",
    "ProgressLines",
    "ResumeState",
    "Words",
    "aembed_file",
    "astream",
    "default_depth",
    "embed_each",
    "embed_file",
    "encode",
    "guess_format",
    "progress_bar",
    "run_file",
    "stream_blocking",
]
