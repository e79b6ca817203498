"""Pseudonymous user IDs: a keyed hash of every raw user ID, applied at ingest.

With ``data.pseudonymize`` the reader replaces each user ID by
``HMAC-SHA256(secret, ID)`` as 64 lowercase hex characters before the
vocabulary is built, so everything downstream (forgetting.parquet,
states.parquet, recommendations, rejects.parquet, checkpoints) only ever sees
pseudonyms. The secret is read from the file ``data.pseudonym_secret_file``
when that is set, else from the environment variable
``data.pseudonym_secret_env``; the config (and so every checkpoint and
``fgjax-run.json``) records only where the secret comes from, never the
secret. Without the secret a pseudonym cannot be linked back to a raw ID
(short of guessing both the ID and the secret); with it, ``fgjax.load(...)``
maps raw IDs the same way (``Pseudonymizer.apply``).

An ID is hashed as the UTF-8 bytes of its text: an integer ID as its decimal
digits (``7`` and ``"7"`` get one pseudonym, as under
``data.mixed_id_types: string``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fgjax.config import DataConfig
from fgjax.errors import ConfigError

#: The environment variable a config names by default (``data.pseudonym_secret_env``).
DEFAULT_SECRET_ENV = DataConfig.pseudonym_secret_env


def id_bytes(value: Any) -> bytes:
    """The bytes a raw ID is hashed as: UTF-8 of a string, decimal digits of an integer."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value)).encode("ascii")
    raise ConfigError(f"user IDs to pseudonymize must be strings or integers, got {type(value).__name__}")


def read_secret(env_var: str, file: str = "", *, environ: Mapping[str, str] | None = None) -> bytes:
    """The pseudonym secret: the file ``file`` if given (trailing newlines dropped), else ``$env_var``.

    Raises:
      ConfigError: one line naming the file or the environment variable when it is missing or empty
        (never the secret itself).
    """
    environ = os.environ if environ is None else environ
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.pseudonymize is on but the secret file '{path}' (data.pseudonym_secret_file) "
                              "does not exist")
        secret = path.read_bytes().rstrip(b"\r\n")
        if not secret:
            raise ConfigError(f"data.pseudonymize is on but the secret file '{path}' (data.pseudonym_secret_file) "
                              "is empty")
        return secret
    if not env_var:
        raise ConfigError("data.pseudonymize is on but neither data.pseudonym_secret_file nor "
                          "data.pseudonym_secret_env names where the secret is")
    value = environ.get(env_var, "")
    if not value:
        raise ConfigError(f"data.pseudonymize is on but the environment variable {env_var} "
                          f"(data.pseudonym_secret_env) is {'empty' if env_var in environ else 'not set'}: set it "
                          "to the secret, or set data.pseudonym_secret_file to a file holding it")
    return value.encode("utf-8")


class Pseudonymizer:
    """Raw user IDs -> ``HMAC-SHA256(secret, id)`` hex strings. Holds the secret in memory only.

    Args:
      secret: the key (non-empty bytes or str).
    """

    def __init__(self, secret: bytes | str):
        if not isinstance(secret, (bytes, bytearray, str)):  # bytes(5) would be a key of five zero bytes
            raise ConfigError(f"the pseudonym secret is bytes or str, got {type(secret).__name__}")
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not secret:
            raise ConfigError("the pseudonym secret is empty")
        self._secret = bytes(secret)

    def __repr__(self) -> str:  # never show the secret, e.g. in a traceback or a log
        return "Pseudonymizer(secret=<hidden>)"

    @classmethod
    def from_config(cls, data: DataConfig, *, environ: Mapping[str, str] | None = None) -> "Pseudonymizer | None":
        """The pseudonymizer ``data`` asks for (None when ``data.pseudonymize`` is off), its secret read from the
        file or environment variable the config names (``read_secret``)."""
        if not data.pseudonymize:
            return None
        return cls(read_secret(data.pseudonym_secret_env, data.pseudonym_secret_file, environ=environ))

    def pseudonym(self, raw: Any) -> str:
        """One raw ID -> its 64-character hex pseudonym."""
        return hmac.new(self._secret, id_bytes(raw), hashlib.sha256).hexdigest()

    def apply(self, ids: pa.Array | pa.ChunkedArray) -> pa.Array:
        """``(n,)`` raw IDs (int64 or string, nulls allowed) -> ``(n,)`` string pseudonyms (nulls stay null).

        Each distinct ID is hashed once.
        """
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        if not pa.types.is_integer(ids.type) and not pa.types.is_string(ids.type) \
                and not pa.types.is_large_string(ids.type) and not pa.types.is_null(ids.type):
            raise ConfigError(f"user IDs to pseudonymize must be strings or integers, got {ids.type}")
        uniq = pc.unique(pc.drop_null(ids))
        hashed = pa.array([self.pseudonym(v) for v in uniq.to_pylist()], pa.string())
        index = pc.index_in(ids, value_set=uniq)
        return pc.take(hashed, index) if len(uniq) else pa.nulls(len(ids), pa.string())
