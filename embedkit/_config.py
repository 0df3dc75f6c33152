"""The vocabulary every layer shares: types, defaults and configuration value objects."""

from __future__ import annotations

import os
import ssl
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["CertTypes", "Matrix", "Pooling", "VerifyTypes"]

#: An embedding matrix: (n, dim) float32, C-contiguous, one row per text.
Matrix = npt.NDArray[np.float32]
#: How token-level answers are pooled into one vector per text.
Pooling = Literal["mean", "cls"]

#: ``verify=``: True (httpx's trust store), False (no verification: testing only), a CA
#: bundle file or directory, or a ready `ssl.SSLContext`.
VerifyTypes = bool | str | os.PathLike[str] | ssl.SSLContext
#: ``cert=``: a client certificate file (with its key), ``(cert, key)`` or
#: ``(cert, key, password)``, as httpx takes it.
CertTypes = str | tuple[str, str] | tuple[str, str, str]
