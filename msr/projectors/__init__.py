"""The projector zoo: every projector maps vision features (B, N, d) to LLM tokens (B, M, c).

Each module below registers its class; `build_projector(name, ...)` is the one way to make one.
"""

from msr.projectors import (  # noqa: F401  (imported for their @register_projector side effect)
    avgpool,
    c_abstractor,
    ldp_v2,
    mlp,
    ms_resampler,
    pixel_shuffle,
    resampler,
    tokenpacker,
)
from msr.projectors.base import Projector
from msr.projectors.registry import (
    PROJECTORS,
    active_options,
    build_projector,
    create_projector,
    describe_projectors,
    output_tokens,
    projector_class,
    projector_options,
    register_projector,
    validate_options,
)
from msr.projectors.scope import scope_bias

__all__ = [
    "PROJECTORS",
    "Projector",
    "active_options",
    "build_projector",
    "create_projector",
    "describe_projectors",
    "output_tokens",
    "projector_class",
    "projector_options",
    "register_projector",
    "scope_bias",
    "validate_options",
]
