"""Bulk work: the one streaming loop (`stream`), `embed_file` (`files`) and its engine (`run`),
corpus readers (`corpus`), outputs (`npy`, `sinks`), resume state (`state`) and progress.
"""

from __future__ import annotations

from .corpus import FORMATS, CorpusError, guess_format
from .files import aembed_file, embed_file, run_file
from .progress import FileProgress, ProgressLines, progress_bar
from .run import FileResult, Words
from .state import ResumeState, state_path
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
    "state_path",
    "stream_blocking",
]
