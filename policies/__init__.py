"""authgate's policy language: load YAML policies, decide requests, explain and test decisions.

Pure: no network, no aiohttp; the only I/O is reading policy files.
"""

from policies.api import load_policy_set, load_policy_text
from policies.compiler import PolicySet
from policies.engine import decide, decide_fast
from policies.errors import PolicyError
from policies.model import (
    Action,
    Decision,
    Level,
    Principal,
    RequestContext,
    StepOutcome,
    TraceStep,
)

__all__ = [
    "Action",
    "Decision",
    "Level",
    "PolicyError",
    "PolicySet",
    "Principal",
    "RequestContext",
    "StepOutcome",
    "TraceStep",
    "decide",
    "decide_fast",
    "load_policy_set",
    "load_policy_text",
]
