"""A Decision and its trace, as text for people and as JSON-able data for tools and audit."""

from __future__ import annotations

from typing import Any

from policies.model import Decision, RequestContext, StepOutcome

_MARK = {StepOutcome.HELD: "✔", StepOutcome.NOT_HELD: "✘", StepOutcome.UNKNOWN: "?"}


def explain_text(decision: Decision, ctx: RequestContext | None = None) -> str:
    """Lines like `decision: DENY`, `rule: admin-area`, then one line per rule tried."""
    lines = []
    if ctx is not None:
        who = ctx.principal.user if ctx.principal is not None else "anonymous"
        lines.append(
            f"request:  {ctx.method} {ctx.host}{ctx.path} ip={ctx.ip or '-'} "
            f"country={ctx.country or '-'} user={who}"
        )
    lines.append(f"decision: {decision.action.value}")
    lines.append(f"rule:     {decision.rule if decision.rule is not None else '(default)'}")
    lines.append(f"reason:   {decision.reason}")
    if decision.trace:
        lines.append("trace:")
        for step in decision.trace:
            lines.append(f"  {_MARK[step.outcome]} [{step.index}] {step.rule}: {step.reason}")
    return "\n".join(lines)


def explain_data(decision: Decision) -> dict[str, Any]:
    """`{"decision", "rule", "reason", "trace": [{"index", "rule", "outcome", "reason"}]}`."""
    return {
        "decision": decision.action.value,
        "rule": decision.rule,
        "reason": decision.reason,
        "trace": [
            {
                "index": step.index,
                "rule": step.rule,
                "outcome": step.outcome.value,
                "reason": step.reason,
            }
            for step in decision.trace
        ],
    }
