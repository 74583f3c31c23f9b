"""rlplugins' environment variables: one prefix, ``RLPLUGINS_``.

Until release 0.2 the old ``RLP_`` spelling of a name is still read, with a ``FutureWarning`` naming the new one
(once per variable and process). When both are set, the ``RLPLUGINS_`` value wins. Standard library only, so the
kernels and the adapters can read their variables through it.
"""

from __future__ import annotations

import os
import warnings

PREFIX = "RLPLUGINS_"
#: Deprecated prefix, read as an alias for one release.
OLD_PREFIX = "RLP_"

_warned: set[str] = set()


def env(name: str, default: str | None = None) -> str | None:
    """The value of ``RLPLUGINS_<name>``, else of the deprecated ``RLP_<name>`` (with a FutureWarning), else
    ``default``. ``name`` is given without prefix, e.g. ``env("FWD_BLOCK")``."""
    new = PREFIX + name
    if new in os.environ:
        return os.environ[new]
    old = OLD_PREFIX + name
    if old in os.environ:
        if old not in _warned:
            _warned.add(old)
            warnings.warn(f"environment variable {old} is deprecated and will stop working in rlplugins 0.2; "
                          f"set {new} instead", FutureWarning, stacklevel=2)
        return os.environ[old]
    return default


def env_flag(name: str) -> bool:
    """True when ``RLPLUGINS_<name>`` (or its deprecated alias) is ``"1"``: the switches of the slow test tiers."""
    return env(name) == "1"
