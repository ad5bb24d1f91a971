"""Generation backends behind one interface (`base.Backend`); vLLM is imported only when selected.

Build one with `factory.make_backend` (not re-exported here, so that importing this package never
reaches the backends that import `base` back).
"""

from valley.generate.backends.base import Backend, Completion, Request, Sampling, sample_seed

__all__ = ["Backend", "Completion", "Request", "Sampling", "sample_seed"]
