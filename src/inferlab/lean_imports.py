"""Start-up time of inferlab's own processes (the CLI, each method's worker)."""

from __future__ import annotations

import sys


def skip_unused_imports() -> None:
    """Make transformers see scikit-learn as absent in this process.

    nncf (the OpenVINO exporter's compressor) installs scikit-learn, and transformers then
    imports it at start-up for an assisted-decoding helper inferlab never calls: measured 2-3 s
    of every process that loads a model class (8.6 s -> 6.1 s for `from transformers import
    AutoModelForCausalLM`, 2 cores). A None entry in sys.modules makes importlib report the
    package missing. Only for inferlab's entry points, never on import of the package: a program
    that imports inferlab as a library keeps its scikit-learn. The OpenVINO export runs
    optimum-cli in a process of its own, with nncf and scikit-learn intact."""
    sys.modules.setdefault("sklearn", None)
