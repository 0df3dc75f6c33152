"""embedkit: fast, batched, resilient text embeddings from HF, TEI, OpenAI-compatible
servers or a local model, as float32 numpy matrices.

    async with embedkit.AsyncEmbedder("thenlper/gte-large") as emb:
        vector = await emb.embed("Today is a sunny day")     # shape (dim,)
        matrix = await emb.embed_many(["first", "second"])   # shape (2, dim)
"""

from ._backends import Backend as Backend
from ._backends import BackendInfo as BackendInfo
from ._backends import CompleteBackend as CompleteBackend
from ._backends import Endpoint as Endpoint
from ._bulk import CorpusError as CorpusError
from ._bulk import FileProgress as FileProgress
from ._bulk import FileResult as FileResult
from ._bulk import aembed_file as aembed_file
from ._bulk import embed_file as embed_file
from ._cache import EmbeddingCache as EmbeddingCache
from ._cache import RedisCache as RedisCache
from ._cache import RedisQuota as RedisQuota
from ._cache import SQLiteCache as SQLiteCache
from ._client import AsyncEmbedder as AsyncEmbedder
from ._config import DEFAULT_MAX_BATCH_SIZE as DEFAULT_MAX_BATCH_SIZE
from ._config import DEFAULT_MAX_CONCURRENCY as DEFAULT_MAX_CONCURRENCY
from ._config import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from ._config import OPENAI_MAX_BATCH_SIZE as OPENAI_MAX_BATCH_SIZE
from ._config import OPENAI_MAX_TOKENS_PER_REQUEST as OPENAI_MAX_TOKENS_PER_REQUEST
from ._config import Connection as Connection
from ._config import Limits as Limits
from ._core import DEFAULT_RETRY as DEFAULT_RETRY
from ._core import EndpointStats as EndpointStats
from ._core import RetryPolicy as RetryPolicy
from ._core import SchedulerStats as SchedulerStats
from ._errors import AuthenticationError as AuthenticationError
from ._errors import BatchTooLargeError as BatchTooLargeError
from ._errors import ClientClosedError as ClientClosedError
from ._errors import DeadlineExceededError as DeadlineExceededError
from ._errors import EmbedkitError as EmbedkitError
from ._errors import InputError as InputError
from ._errors import ModelLoadingError as ModelLoadingError
from ._errors import ModelNotFoundError as ModelNotFoundError
from ._errors import RateLimitError as RateLimitError
from ._errors import ResponseError as ResponseError
from ._errors import ServerError as ServerError
from ._errors import StatusError as StatusError
from ._errors import TokenLimitError as TokenLimitError
from ._errors import TransportError as TransportError
from ._options import EmbedderOptions as EmbedderOptions
from ._quantize import quantize as quantize
from ._quantize import unpackbits as unpackbits
from ._similarity import cosine_similarity as cosine_similarity
from ._similarity import top_k as top_k
from ._sync import Embedder as Embedder
from ._version import __version__ as __version__

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "OPENAI_MAX_BATCH_SIZE",
    "OPENAI_MAX_TOKENS_PER_REQUEST",
    "AsyncEmbedder",
    "AuthenticationError",
    "Backend",
    "BackendInfo",
    "BatchTooLargeError",
    "ClientClosedError",
    "CompleteBackend",
    "Connection",
    "CorpusError",
    "DeadlineExceededError",
    "Embedder",
    "EmbedderOptions",
    "EmbeddingCache",
    "EmbedkitError",
    "Endpoint",
    "EndpointStats",
    "FileProgress",
    "FileResult",
    "InputError",
    "Limits",
    "ModelLoadingError",
    "ModelNotFoundError",
    "RateLimitError",
    "RedisCache",
    "RedisQuota",
    "ResponseError",
    "RetryPolicy",
    "SQLiteCache",
    "SchedulerStats",
    "ServerError",
    "StatusError",
    "TokenLimitError",
    "TransportError",
    "__version__",
    "aembed_file",
    "cosine_similarity",
    "embed_file",
    "quantize",
    "top_k",
    "unpackbits",
]

# Show the public path (embedkit.RateLimitError) in reprs and tracebacks, not the private
# module a name happens to live in (embedkit._errors.RateLimitError), as httpx does.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("embedkit."):
        _obj.__module__ = "embedkit"
del _name, _obj
