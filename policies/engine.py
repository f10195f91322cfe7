"""`decide()`: the first rule whose conditions all hold decides. Pure and deterministic.

Choices the contract leaves to us (DESIGN §3), each failing closed:

* **Anonymous request, rule with `subjects`.** The subject cannot be known, so the
  rule answers LOGIN (for `bypass`, `one_factor`, `two_factor`). A `deny` rule with
  subjects does *not* hold for an anonymous request: it only takes access away from
  named subjects, and an anonymous request can never get more than the policy gives
  anyone anonymous, so skipping it grants nothing a login would not also meet.
* **Unknown country or IP.** It never satisfies an allow-list (`countries`,
  `networks`). Under `not_countries` / `not_networks` the rule may or may not hold,
  so the engine takes the *stricter* of the two answers: the rule's own answer (as if
  the condition held) and whatever the later rules or the default answer (as if it did
  not). `not_countries: [GB] → deny` thus denies an unknown country, and
  `not_countries: [RU] → bypass` does not let one through. Strictness:
  ALLOW < REAUTH < SECOND_FACTOR < LOGIN < DENY; on a tie the earlier rule is named.
* **Levels.** bypass → ALLOW. one_factor → LOGIN if anonymous, else ALLOW. two_factor →
  LOGIN if anonymous, SECOND_FACTOR unless `amr` holds "mfa" or two distinct methods,
  else ALLOW. deny → DENY. With `fresh`, an authentication older than that answers
  REAUTH, before SECOND_FACTOR (re-authenticating brings the factors anyway).
* **Roles.** `subjects.roles` matches the principal's roles and every role they
  inherit; `subjects.permissions` matches when any listed permission is covered by the
  principal's effective permissions (its roles' with inheritance, plus those granted
  directly in `Principal.permissions`), with wildcards (`wiki.*`, `*`).
"""

from __future__ import annotations

import enum

from policies.compiler import CompiledRule, PolicySet
from policies.matchers import NO_GRANTS, Grants, normalise_ip
from policies.model import (
    STRICTNESS,
    Action,
    Decision,
    IPAddress,
    Level,
    Principal,
    RequestContext,
    StepOutcome,
    TraceStep,
)


class _Check(enum.Enum):
    """Why a rule did not hold (or that it did); formatted into text only for traces."""

    HELD = 0
    UNKNOWN = 1  # held, except a not_* condition met an unknown country/IP
    HOST = 2
    METHOD = 3
    PATH = 4
    NETWORK = 5
    NETWORK_UNKNOWN = 6
    NOT_NETWORK = 7
    COUNTRY = 8
    COUNTRY_UNKNOWN = 9
    NOT_COUNTRY = 10
    SUBJECT = 11
    ANONYMOUS_DENY = 12


def has_two_factors(amr: tuple[str, ...]) -> bool:
    return "mfa" in amr or len(set(amr)) >= 2


class _Subject:
    """The principal's effective roles and permissions, computed only if a rule asks."""

    __slots__ = ("_grants", "_roles", "policy", "principal")

    def __init__(self, policy: PolicySet, principal: Principal) -> None:
        self.policy = policy
        self.principal = principal
        self._roles: frozenset[str] | None = None
        self._grants: Grants | None = None

    @property
    def roles(self) -> frozenset[str]:
        if self._roles is None:
            closure = self.policy.role_closure
            found: set[str] = set()
            for role in self.principal.roles:
                found |= closure.get(role, {role})
            self._roles = frozenset(found)
        return self._roles

    @property
    def grants(self) -> Grants:
        if self._grants is None:
            perms = self.policy.role_permissions
            granted: set[str] = set(self.principal.permissions)
            for role in self.principal.roles:
                granted |= perms.get(role, frozenset())
            self._grants = Grants.of(granted) if granted else NO_GRANTS
        return self._grants


def _check(
    rule: CompiledRule,
    ctx: RequestContext,
    host: str | None,
    method: str,
    lowered: str,
    ip: IPAddress | None,
    country: str | None,
    subject: _Subject | None,
) -> _Check:
    """`host` is None when the host index already chose this rule."""
    if host is not None and not rule.matches_host(host):
        return _Check.HOST
    if rule.methods is not None and method not in rule.methods:
        return _Check.METHOD
    if rule.paths is not None and not rule.paths.matches(ctx.path, lowered):
        return _Check.PATH
    unknown = False
    if rule.networks is not None:
        if ip is None:
            return _Check.NETWORK_UNKNOWN
        if not rule.networks.contains(ip):
            return _Check.NETWORK
    if rule.not_networks is not None:
        if ip is None:
            unknown = True
        elif rule.not_networks.contains(ip):
            return _Check.NOT_NETWORK
    if rule.countries is not None:
        if country is None:
            return _Check.COUNTRY_UNKNOWN
        if country not in rule.countries:
            return _Check.COUNTRY
    if rule.not_countries is not None:
        if country is None:
            unknown = True
        elif country in rule.not_countries:
            return _Check.NOT_COUNTRY
    subjects = rule.subjects
    if subjects is not None:
        if subject is None:
            if rule.level is Level.DENY:
                return _Check.ANONYMOUS_DENY
        else:
            p = subject.principal
            if not (
                p.user in subjects.users
                or not subjects.groups.isdisjoint(p.groups)
                or (subjects.roles and not subjects.roles.isdisjoint(subject.roles))
                or (
                    subjects.permissions
                    and any(subject.grants.covers(x) for x in subjects.permissions)
                )
            ):
                return _Check.SUBJECT
    return _Check.UNKNOWN if unknown else _Check.HELD


def _answer(level: Level, has_subjects: bool, fresh: float | None, ctx: RequestContext) -> Action:
    """What a holding rule (or the default) answers for this principal."""
    if level is Level.DENY:
        return Action.DENY
    principal = ctx.principal
    if principal is None:
        return Action.ALLOW if level is Level.BYPASS and not has_subjects else Action.LOGIN
    if level is Level.BYPASS:
        return Action.ALLOW
    if fresh is not None and ctx.now - principal.auth_time > fresh:
        return Action.REAUTH
    if level is Level.TWO_FACTOR and not has_two_factors(principal.amr):
        return Action.SECOND_FACTOR
    return Action.ALLOW


def decide(policy: PolicySet, ctx: RequestContext, *, trace: bool = True) -> Decision:
    """Decide one request. With `trace`, every rule is tried in order and explained
    (for the CLI and the audit log); without, only the rules the host index names."""
    host = ctx.host.lower().rstrip(".")
    method = ctx.method.upper()
    lowered = ctx.path.lower()
    ip = normalise_ip(ctx.ip) if ctx.ip is not None else None
    country = ctx.country.upper() if ctx.country else None
    principal = ctx.principal
    subject: _Subject | None = None  # built when the first rule with subjects needs it
    rules = policy.rules
    steps: list[TraceStep] | None = [] if trace else None
    positions = range(len(rules)) if trace else policy.index.candidates(host)
    pending: tuple[Action, CompiledRule] | None = None
    for position in positions:
        rule = rules[position]
        if subject is None and principal is not None and rule.subjects is not None:
            subject = _Subject(policy, principal)
        check = _check(rule, ctx, host if trace else None, method, lowered, ip, country, subject)
        if check is _Check.HELD or check is _Check.UNKNOWN:
            action = _answer(rule.level, rule.subjects is not None, rule.fresh, ctx)
            if steps is not None:
                outcome = StepOutcome.HELD if check is _Check.HELD else StepOutcome.UNKNOWN
                steps.append(
                    TraceStep(position, rule.name, outcome, _why(check, rule, ctx, action))
                )
            if check is _Check.UNKNOWN:
                if pending is None or STRICTNESS[action] > STRICTNESS[pending[0]]:
                    pending = (action, rule)
                continue
            if pending is not None and STRICTNESS[pending[0]] > STRICTNESS[action]:
                return _decision(pending[0], pending[1], steps)
            return _decision(action, rule, steps)
        if steps is not None:
            steps.append(
                TraceStep(position, rule.name, StepOutcome.NOT_HELD, _why(check, rule, ctx, None))
            )
    action = _answer(policy.default, False, None, ctx)
    if pending is not None and STRICTNESS[pending[0]] > STRICTNESS[action]:
        return _decision(pending[0], pending[1], steps)
    if steps is None:
        return policy.default_decisions[action]
    return Decision(action, None, policy.default_reasons[action], tuple(steps))


def decide_fast(policy: PolicySet, ctx: RequestContext) -> Decision:
    """The gateway's per-request call: same answer as `decide`, no trace built."""
    return decide(policy, ctx, trace=False)


def _decision(action: Action, rule: CompiledRule, steps: list[TraceStep] | None) -> Decision:
    if steps is None:
        return rule.decisions[action]
    return Decision(action, rule.name, rule.reasons[action], tuple(steps))


def _why(check: _Check, rule: CompiledRule, ctx: RequestContext, action: Action | None) -> str:
    spec = rule.spec
    if check is _Check.HELD:
        return f"all conditions hold → {action.value if action else ''}"
    if check is _Check.UNKNOWN:
        return (
            f"holds unless the unknown country/IP is excluded → {action.value if action else ''}; "
            "the stricter of this and the rest is taken"
        )
    user = ctx.principal.user if ctx.principal else "-"
    texts = {
        _Check.HOST: f"host {ctx.host} not in {list(spec.hosts)}",
        _Check.METHOD: f"method {ctx.method} not in {list(spec.methods)}",
        _Check.PATH: f"path {ctx.path} not in {list(spec.paths)}",
        _Check.NETWORK: f"ip {ctx.ip} not in networks",
        _Check.NETWORK_UNKNOWN: "ip unknown: networks cannot hold",
        _Check.NOT_NETWORK: f"ip {ctx.ip} is in not_networks",
        _Check.COUNTRY: f"country {ctx.country} not in {list(spec.countries)}",
        _Check.COUNTRY_UNKNOWN: "country unknown: countries cannot hold",
        _Check.NOT_COUNTRY: f"country {ctx.country} is in not_countries",
        _Check.SUBJECT: f"user {user} matches none of the subjects",
        _Check.ANONYMOUS_DENY: "anonymous: a deny for named subjects does not apply",
    }
    return texts[check]
