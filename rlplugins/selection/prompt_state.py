"""State encoding of `PromptGroupSelector` (version 2): per-prompt arrays as base64 strings, keys as one string.

A million prompts save and load without building a Python object per prompt (the previous list-per-prompt state
spent most of its save time in cyclic garbage collection).
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

import numpy as np

# rows allocated at least (the history array grows by doubling up to max_prompts)
MIN_ROWS = 1024
# Prompt keys travel as one string joined by this separator (one JSON string parses far faster than a million), or
# as a list when a key contains it.
_KEY_SEP = "\x1f"


def join_keys(keys: list[str]) -> str | list[str]:
    if not keys:
        return []
    joined = _KEY_SEP.join(keys)
    return joined if joined.count(_KEY_SEP) == len(keys) - 1 else list(keys)


def b64(a: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def decode_prompts(prompts: Any) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, int]:
    """The arrays of a version-2 ``prompts`` entry, checked for consistent sizes."""
    fields = {"keys", "history_size", "history", "lengths", "last_seen", "clock"}
    if not isinstance(prompts, Mapping) or not fields <= prompts.keys():
        raise ValueError(f"PromptGroupSelector state field prompts must hold {', '.join(sorted(fields))}")
    keys = prompts["keys"]
    if isinstance(keys, str):
        keys = keys.split(_KEY_SEP)
    k = int(prompts["history_size"])
    try:
        hist = np.frombuffer(base64.b64decode(prompts["history"]), dtype="<f8").astype(np.float64)
        lens = np.frombuffer(base64.b64decode(prompts["lengths"]), dtype="<u2").astype(np.int64)
        stamps = np.frombuffer(base64.b64decode(prompts["last_seen"]), dtype="<i8").astype(np.int64)
    except (ValueError, TypeError) as err:
        raise ValueError(f"PromptGroupSelector state field prompts is corrupted: {err}") from None
    n = len(keys) if isinstance(keys, list) else -1
    if n < 0 or k < 1 or hist.size != n * k or lens.size != n or stamps.size != n or (n and int(lens.max()) > k):
        raise ValueError(
            f"PromptGroupSelector state field prompts is inconsistent: {n} keys, {hist.size} history values, "
            f"{lens.size} lengths, {stamps.size} stamps, history_size {k}"
        )
    return keys, hist.reshape(n, k), lens, stamps, int(prompts["clock"])


def decode_version_1(histories: list, history_size: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, int]:
    """The arrays of a version-1 state's ``histories``: a ``[key, [pass rates]]`` list per prompt, least recently
    seen first (written by releases before the array storage)."""
    keys = [str(key) for key, _ in histories]
    k_saved = max([history_size] + [len(h) for _, h in histories])
    hist = np.full((len(keys), k_saved), np.nan)
    lens = np.zeros(len(keys), dtype=np.int64)
    for r, (_, h) in enumerate(histories):
        hist[r, : len(h)] = [float(v) for v in h]
        lens[r] = len(h)
    return keys, hist, lens, np.arange(1, len(keys) + 1, dtype=np.int64), len(keys)


def fit_histories(
    keys: list[str], hist: np.ndarray, lens: np.ndarray, stamps: np.ndarray, history_size: int, max_prompts: int
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Dense rows for the state's prompts, with room to grow: the ``max_prompts`` most recently seen, each history
    cut to its last ``history_size`` entries (a resumed run may shrink either)."""
    if len(keys) > max_prompts:
        keep = np.sort(np.argsort(stamps, kind="stable")[len(keys) - max_prompts:])
        keys = [keys[i] for i in keep.tolist()]
        hist, lens, stamps = hist[keep], lens[keep], stamps[keep]
    n = len(keys)
    new_len = np.minimum(lens, history_size)
    cols = np.arange(history_size)
    src = (lens - new_len)[:, None] + cols[None, :]  # the last new_len entries, oldest first
    cap = min(max_prompts, max(MIN_ROWS, n))
    out = np.full((cap, history_size), np.nan)
    if n:
        taken = np.take_along_axis(hist, np.minimum(src, hist.shape[1] - 1), axis=1)
        out[:n] = np.where(cols[None, :] < new_len[:, None], taken, np.nan)
    lengths = np.zeros(cap, dtype=np.int64)
    lengths[:n] = new_len
    last_seen = np.zeros(cap, dtype=np.int64)
    last_seen[:n] = stamps
    return list(keys), out, lengths, last_seen
