"""Shared pytest configuration.

tests/ is deliberately not a package (no __init__.py) and pytest runs with --import-mode=importlib:
OpenRLHF's wheel installs a top-level `tests` package that would otherwise shadow ours.
"""

import os

from hypothesis import HealthCheck, settings

# Property tests run on a 2-core CI machine: no per-example deadline, a bounded number of examples.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=int(os.environ.get("RLP_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("RLP_HYPOTHESIS_PROFILE", "ci"))
