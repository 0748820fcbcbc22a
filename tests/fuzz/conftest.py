"""Bounded fuzzing of every loader with hypothesis: a loader given any input returns or raises the project's
UserError; any other exception type is a failure. CI runs a fixed, derandomized set of examples (reproducible);
elsewhere the examples are random. EDGEAWQ_FUZZ_EXAMPLES sets the count per target (default 300)."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "edgeawq-fuzz", max_examples=int(os.environ.get("EDGEAWQ_FUZZ_EXAMPLES", "300")), deadline=None,
    derandomize=bool(os.environ.get("CI")), suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
settings.load_profile("edgeawq-fuzz")
