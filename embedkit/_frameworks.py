"""What the LangChain and LlamaIndex classes share: settings, and one embedder on its own loop.

Frameworks call embedding models from anywhere: a sync method in a script, the same method in
a Jupyter cell (inside a running event loop), an async method under `asyncio.run` — several
times, each with a new loop — or from FastAPI's worker threads. An `AsyncEmbedder` belongs to
the loop that opened it, so `SharedEmbedder` opens one on an event loop of its own, in a
daemon thread, the first time it is used:

* a sync call submits the work to that loop and blocks until its rows come back;
* an async call awaits a future on its own loop; the work is queued for the embedder's loop
  (one wake-up for a burst of calls), runs there as a task, and its result is handed back with
  `call_soon_threadsafe`. Callers on any loop share one scheduler — concurrent chains coalesce
  into shared batches — and a caller's loop ending never breaks the embedder.

`close()` (or `aclose()`) stops it; an object that is dropped, or still open when the
interpreter exits, is closed by a `weakref.finalize`, so no thread or connection outlives it.
`EmbedkitModel` is the pydantic base of both framework classes: one field per `AsyncEmbedder`
option, and the shared embedder. This module is imported only by the framework modules,
which bring pydantic along; `import embedkit` never loads it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Generic, Literal, TypeVar

import anyio.from_thread
import anyio.to_thread
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from ._auth import resolve_token
from ._backends import Backend
from ._cache import EmbeddingCache
from ._client import AsyncEmbedder
from ._config import CONNECTION_FIELDS, LIMITS_FIELDS, Api, Connection, Kind, Limits, Matrix
from ._core import DEFAULT_RETRY, Quota, RetryPolicy, SchedulerStats
from ._errors import ClientClosedError
from ._options import fold_legacy

__all__ = ["EmbedkitModel", "SharedEmbedder"]

T = TypeVar("T")


class SharedEmbedder:
    """One `AsyncEmbedder`, opened lazily on a private event loop, callable from anywhere.

    Args:
        embedder: the (unopened) embedder to run; it is opened on first use.
        name: the loop thread's name, for debuggers and `threading.enumerate()`.
    """

    def __init__(self, embedder: AsyncEmbedder, *, name: str = "embedkit-shared") -> None:
        self.embedder = embedder
        self._name = name
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._inbox: collections.deque[_Call[Any]] = collections.deque()
        self._inbox_lock = threading.Lock()
        self._waking: set[asyncio.AbstractEventLoop] = set()  # caller loops with a wake-up due
        self._owners = 0
        # touched only on the embedder's loop
        self._replies: dict[asyncio.AbstractEventLoop, list[_Call[Any]]] = {}

    @property
    def started(self) -> bool:
        """True once the loop thread runs (after the first call, until `close()`)."""
        return self._loop is not None

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._closed:
                raise ClientClosedError("this embedder is closed")
            if self._loop is not None:
                return self._loop
            stack = contextlib.ExitStack()
            try:
                # asyncio, whatever the caller runs: calls are bridged with asyncio's
                # thread-safe primitives, which need an asyncio loop on this side.
                portal = stack.enter_context(
                    anyio.from_thread.start_blocking_portal("asyncio", name=self._name)
                )
                stack.enter_context(portal.wrap_async_context_manager(self.embedder))
                loop = portal.call(_running_loop)
                self._thread = portal.call(threading.current_thread)
            except BaseException:
                self._closed = True
                stack.close()
                raise
            self._stack = stack
            self._loop = loop
            return loop

    def submit(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Any:
        """Run `func(*args)` on the embedder's loop; a `concurrent.futures.Future`."""
        loop = self._start()
        return asyncio.run_coroutine_threadsafe(func(*args), loop)

    def call(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run `func(*args)` on the embedder's loop and block until it is done.

        Works in any thread, including one that runs an event loop (a Jupyter cell): the
        work runs on the embedder's own loop, so blocking the caller's cannot deadlock it.
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("a blocking call cannot run on the embedder's own loop thread")
        future: concurrent.futures.Future[T] = self.submit(func, *args)
        try:
            return future.result()
        except concurrent.futures.CancelledError:  # the embedder's loop stopped: a close
            raise ClientClosedError("the embedder was closed") from None
        except BaseException:
            future.cancel()  # KeyboardInterrupt in a notebook: drop the work, not the loop
            raise

    async def acall(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run `func(*args)` on the embedder's loop and await it from the caller's loop.

        Cancelling the caller cancels the work (its texts are dropped if not yet sent).
        """
        try:
            caller = asyncio.get_running_loop()
        except RuntimeError:  # another event loop (trio): wait in a worker thread
            future: concurrent.futures.Future[T] = self.submit(func, *args)
            try:
                return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
            finally:
                future.cancel()
        call = _Call(func, args, caller)
        self._post(call)
        try:
            return await call.future
        except asyncio.CancelledError:
            task, loop = call.task, self._loop
            if task is not None and loop is not None:
                with contextlib.suppress(RuntimeError):  # the embedder was closed meanwhile
                    loop.call_soon_threadsafe(task.cancel)
            raise

    def _post(self, call: _Call[Any]) -> None:
        """Queue a call for the embedder's loop.

        Calls made in one iteration of the caller's loop (an `asyncio.gather` of a thousand
        queries) cross to the embedder's loop together, with one wake-up: waking another
        thread costs far more than a call does.
        """
        loop = self._start()
        caller = call.caller
        with self._inbox_lock:
            self._inbox.append(call)
            if caller in self._waking:
                return
            self._waking.add(caller)
        caller.call_soon(self._wake, caller, loop)

    def _wake(self, caller: asyncio.AbstractEventLoop, loop: asyncio.AbstractEventLoop) -> None:
        """On a caller's loop, at the end of its iteration: wake the embedder's loop once."""
        with self._inbox_lock:
            self._waking.discard(caller)
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # closed meanwhile: nobody will drain; fail this loop's calls
            with self._inbox_lock:
                mine = [c for c in self._inbox if c.caller is caller]
                for call in mine:
                    self._inbox.remove(call)
            for call in mine:
                call.fail(ClientClosedError("the embedder was closed"))

    def _drain(self) -> None:
        """On the embedder's loop: start a task for every queued call."""
        with self._inbox_lock:
            calls = list(self._inbox)
            self._inbox.clear()
        loop = asyncio.get_running_loop()
        for call in calls:
            if call.future.cancelled():
                continue
            call.task = loop.create_task(call.func(*call.args))
            call.task.add_done_callback(functools.partial(self._finished, call))

    def _finished(self, call: _Call[Any], task: asyncio.Task[Any]) -> None:
        """On the embedder's loop: queue the answer; one wake-up per caller loop per burst."""
        replies = self._replies.setdefault(call.caller, [])
        replies.append(call)
        if len(replies) == 1:
            asyncio.get_running_loop().call_soon(self._reply, call.caller)

    def _reply(self, caller: asyncio.AbstractEventLoop) -> None:
        calls = self._replies.pop(caller, [])
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits
            caller.call_soon_threadsafe(_resolve_all, calls)

    def embed(self, text: str, kind: Kind | None = None) -> Matrix:
        """Blocking `AsyncEmbedder.embed`."""
        return self.call(functools.partial(self.embedder.embed, kind=kind), text)

    def embed_many(self, texts: list[str], kind: Kind | None = None) -> Matrix:
        """Blocking `AsyncEmbedder.embed_many`."""
        return self.call(functools.partial(self.embedder.embed_many, kind=kind), texts)

    async def aembed(self, text: str, kind: Kind | None = None) -> Matrix:
        """`AsyncEmbedder.embed` from any event loop."""
        return await self.acall(functools.partial(self.embedder.embed, kind=kind), text)

    async def aembed_many(self, texts: list[str], kind: Kind | None = None) -> Matrix:
        """`AsyncEmbedder.embed_many` from any event loop."""
        return await self.acall(functools.partial(self.embedder.embed_many, kind=kind), texts)

    def adopt(self, owner: object) -> None:
        """Count `owner` as a user: the last one garbage-collected (or interpreter exit)
        closes the embedder. Copies of a framework object share its embedder this way."""
        with self._lock:
            self._owners += 1
        weakref.finalize(owner, self._release)

    def _release(self) -> None:
        with self._lock:
            self._owners -= 1
            last = self._owners <= 0
        if last:
            self.close()

    def close(self) -> None:
        """Close the embedder and stop its thread; later calls raise `ClientClosedError`."""
        with self._lock:
            self._closed = True
            stack, self._stack = self._stack, None
            self._loop = None
        if stack is None:
            return
        if self._thread is not None and threading.current_thread() is self._thread:
            # Dropped by code running on the loop itself: the loop cannot join its own
            # thread, so a short-lived helper thread closes it.
            threading.Thread(target=stack.close, name=f"{self._name}-close").start()
            return
        stack.close()

    async def aclose(self) -> None:
        """`close()` from async code, without blocking the caller's loop."""
        await anyio.to_thread.run_sync(self.close)


class _Call(Generic[T]):
    """One async call: made on the caller's loop, run on the embedder's, answered back.

    Calls cross between the loops in bursts (one wake-up each way for many calls); the
    caller's future is only touched on the caller's loop.
    """

    __slots__ = ("args", "caller", "func", "future", "task")

    def __init__(
        self,
        func: Callable[..., Coroutine[Any, Any, T]],
        args: tuple[Any, ...],
        caller: asyncio.AbstractEventLoop,
    ) -> None:
        self.func = func
        self.args = args
        self.caller = caller
        self.future: asyncio.Future[T] = caller.create_future()
        self.task: asyncio.Task[T] | None = None

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def resolve(self) -> None:
        """On the caller's loop: hand the task's outcome to the waiting caller."""
        task = self.task
        if self.future.done() or task is None:
            return
        if task.cancelled():  # not by this caller (that cancels `future` first): a close
            self.future.set_exception(ClientClosedError("the embedder was closed"))
        elif (error := task.exception()) is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(task.result())


def _resolve_all(calls: list[_Call[Any]]) -> None:
    for call in calls:
        call.resolve()


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


class EmbedkitModel(BaseModel):
    """Every `AsyncEmbedder` option as a pydantic field, and one shared embedder behind them.

    The base of the LangChain and LlamaIndex classes. `token` is a `SecretStr`, filled from
    the environment as `AsyncEmbedder` does (`HF_TOKEN` or the huggingface CLI's token file
    for hf/tei, `OPENAI_API_KEY` for openai) and never shown. The token and the objects that
    only make sense in this process (`retry`, `connection`, `quota`, `cache`, `backend`) are
    left out of serialized forms (`model_dump`, LlamaIndex's `to_json`). The flat keywords
    that `limits=` and `connection=` replaced still work, with
    a `DeprecationWarning`.
    """

    # hide_input_in_errors: a validation error must never echo the token back.
    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", hide_input_in_errors=True
    )

    model: str | None = Field(default=None, description="Model id, or a folder for api='local'.")
    url: str | list[str] | None = Field(
        default=None,
        description="Server URL (hf: full URL; tei: root), or a list: replicas of one model.",
    )
    api: Api = "hf"
    token: SecretStr | None = Field(
        default=None,
        validate_default=True,
        exclude=True,
        description="API token (default: environment).",
    )
    normalize: bool | None = None
    prompt_name: str | None = None
    truncate: bool | None = None
    truncation_direction: Literal["left", "right"] | None = None
    dimensions: int | None = None
    pooling: Literal["mean", "cls"] | None = None
    device: str | None = None
    limits: InstanceOf[Limits] | None = Field(
        default=None, description="embedkit.Limits: batch size, concurrency, rates."
    )
    connection: InstanceOf[Connection] | None = Field(
        default=None,
        exclude=True,
        description="embedkit.Connection: timeout, TLS, transport (this process only).",
    )
    retry: RetryPolicy | None = Field(default=DEFAULT_RETRY, exclude=True)
    quota: Quota | None = Field(default=None, exclude=True)
    cache_size: int = 0
    cache: EmbeddingCache | None = Field(default=None, exclude=True)
    backend: Backend | None = Field(default=None, exclude=True)
    kind: Literal["query", "document"] | None = Field(
        default=None, description="What texts are for by default: 'query' or 'document'."
    )
    dtype: Literal["float32", "int8", "uint8", "binary", "ubinary"] = Field(
        default="float32", description="Element type of the vectors (packed bits: dim/8)."
    )
    on_overflow: Literal["error", "truncate", "chunk_mean"] = "error"
    count_tokens: Any = Field(
        default=None,
        exclude=True,
        description="None (estimate), a callable, a tokenizer.json path, 'server' (TEI's "
        "/tokenize), or False (off).",
    )

    _shared: SharedEmbedder = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_keywords(cls, data: Any) -> Any:
        """The flat keywords `limits=`/`connection=` replaced still work, with a warning."""
        if not isinstance(data, dict):
            return data
        legacy = {k: data[k] for k in LIMITS_FIELDS | CONNECTION_FIELDS if k in data}
        if not legacy:
            return data
        rest = {k: v for k, v in data.items() if k not in legacy}
        rest["limits"], rest["connection"] = fold_legacy(
            rest.get("limits"), rest.get("connection"), legacy
        )
        return rest

    @field_validator("token", mode="after")
    @classmethod
    def _token_from_environment(cls, value: SecretStr | None, info: ValidationInfo) -> Any:
        if value is not None or info.data.get("api") == "local":
            return value
        found = resolve_token(info.data.get("api", "hf"), None)
        return SecretStr(found.reveal()) if found is not None else None

    def model_post_init(self, context: Any, /) -> None:
        """Build the embedder now, so a bad option fails here, before anything is sent."""
        super().model_post_init(context)
        options = {name: getattr(self, name) for name in EmbedkitModel.model_fields}
        token = options.pop("token")
        options["token"] = token.get_secret_value() if token is not None else None
        shared = SharedEmbedder(AsyncEmbedder(**options), name=f"embedkit-{type(self).__name__}")
        self._shared = shared
        shared.adopt(self)

    def __copy__(self) -> Self:
        copy = super().__copy__()
        self._shared.adopt(copy)
        return copy

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        memo = {} if memo is None else memo
        memo[id(self._shared)] = self._shared  # a copy shares the embedder, not a clone of it
        copy = super().__deepcopy__(memo)
        self._shared.adopt(copy)
        return copy

    def kind_for(self, kind: Kind) -> Kind | None:
        """The kind a framework's query or document call sends: `kind` once the model was
        given a `kind=` (the API has the field and the user opted in), else None."""
        return kind if self.kind is not None else None

    def embed_matrix(self, texts: Sequence[str]) -> Matrix:
        """The float32 matrix (len(texts), dim), row i for text i, with no list conversion."""
        return self._shared.embed_many(list(texts))

    async def aembed_matrix(self, texts: Sequence[str]) -> Matrix:
        """`embed_matrix` from async code, through the same shared embedder."""
        return await self._shared.aembed_many(list(texts))

    def stats(self) -> SchedulerStats:
        """The shared embedder's counters (`embedkit.SchedulerStats`)."""
        return self._shared.call(_stats, self._shared.embedder)

    def close(self) -> None:
        """Close the embedder and stop its thread. Later calls raise `ClientClosedError`."""
        self._shared.close()

    async def aclose(self) -> None:
        """`close()` for async code (it does not block the caller's event loop)."""
        await self._shared.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _stats(embedder: AsyncEmbedder) -> SchedulerStats:
    return embedder.stats()
