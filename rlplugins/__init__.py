"""rlplugins: gated policy losses, SAGE data selection and Triton kernels for RL on LLMs.

The core (this package) is pure PyTorch and imports no RL framework and no Triton at import time.
"""

__version__ = "0.1.0"
