"""Cross-field checks of a rule, and the deployment context some of them need.

Runs after every field of the rule is individually valid and returns every problem at once as
``(field path, message)``. Context-dependent checks (ESP connection names, secrets) run only when the
:class:`RuleContext` carries what they need. Never mutates the rule and never echoes a password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from consumer.events.triggers import PRICE_RANGE_TRIGGERS, Platform, is_trigger, triggers_for
from consumer.rules.model import PriceRange, Rule
from consumer.rules.secrets import stored_password_problem
from consumer.rules.templates import suggestion, template_problems

if TYPE_CHECKING:
    from consumer.settings import Settings

Problem = tuple[str, str]


@dataclass(frozen=True)
class RuleContext:
    """What a deployment knows that a rule document is checked against.

    ``esp_connections``: names of ``EVENTMAIL_ESP_CONNECTIONS`` (None: not checked).
    ``stored``: the rule was read from the rules topic, where clear-text passwords are invalid.
    ``check_secret_key``: an ``enc:`` password must decrypt with ``secret_key``.
    ``secret_names``: when given, a ``secret:NAME`` password must name one of them.
    """

    esp_connections: frozenset[str] | None = None
    stored: bool = False
    secret_key: SecretStr | None = None
    check_secret_key: bool = False
    secret_names: frozenset[str] | None = None

    @classmethod
    def for_files(cls, settings: Settings) -> RuleContext:
        """Rule files on an admin's machine: ESP names checked; secrets only when the key is set there."""
        return cls(
            esp_connections=frozenset(settings.esp_connections),
            secret_key=settings.secret_key,
            check_secret_key=settings.secret_key is not None,
        )

    @classmethod
    def for_topic(cls, settings: Settings) -> RuleContext:
        """Records of the rules topic in the running service: everything must be usable to send."""
        return cls(
            esp_connections=frozenset(settings.esp_connections),
            stored=True,
            secret_key=settings.secret_key,
            check_secret_key=True,
            secret_names=frozenset(settings.secrets),
        )


def cross_field_problems(rule: Rule, context: RuleContext) -> list[Problem]:
    problems: list[Problem] = []
    problems += _trigger_problems(rule)
    problems += _scope_problems(rule)
    problems += _filter_problems(rule)
    problems += _connection_problems(rule, context)
    problems += _fallback_problems(rule, context)
    problems += _template_problems(rule)
    problems += _warning_problems(rule)
    return problems


def _trigger_problems(rule: Rule) -> list[Problem]:
    out: list[Problem] = []
    seen: set[str] = set()
    for i, trigger in enumerate(rule.triggers):
        if not is_trigger(rule.platform, trigger):
            hint = suggestion(trigger, list(triggers_for(rule.platform)))
            out.append(
                (f"triggers.{i}", f"{trigger!r} is not a trigger of platform {rule.platform.value}{hint}")
            )
        elif trigger in seen:
            out.append((f"triggers.{i}", f"duplicate trigger {trigger!r}"))
        seen.add(trigger)
    return out


def _scope_problems(rule: Rule) -> list[Problem]:
    wanted, other = (
        ("product_id", "campaign_id") if rule.level == "product" else ("campaign_id", "product_id")
    )
    out: list[Problem] = []
    if getattr(rule, wanted) is None:
        out.append((wanted, f"required when level is {rule.level.value}"))
    if getattr(rule, other) is not None:
        out.append((other, f"not allowed when level is {rule.level.value} (the rule's scope is {wanted})"))
    return out


def _filter_problems(rule: Rule) -> list[Problem]:
    filters = rule.filters
    out: list[Problem] = []
    price = filters.price
    if isinstance(price, PriceRange):
        others = sorted(set(rule.triggers) - PRICE_RANGE_TRIGGERS)
        if others:
            out.append(
                (
                    "filters.price.op",
                    "range is only for rules whose every trigger is lead_sold or campaign_sold "
                    f"(this rule also has {', '.join(others)})",
                )
            )
        if price.min > price.max:
            out.append(("filters.price.min", f"min ({price.min:g}) is greater than max ({price.max:g})"))
    if filters.call_tracking_pools is not None and rule.platform is not Platform.CALL_LOGIC:
        out.append(("filters.call_tracking_pools", "only for call_logic rules"))
    for name in ("publishers", "channels", "sources", "buyers", "campaigns", "pingtrees"):
        id_filter = getattr(filters, name)
        if id_filter is None:
            continue
        both = sorted(set(id_filter.include) & set(id_filter.exclude))
        if both:
            out.append((f"filters.{name}", f"{', '.join(map(repr, both))} both included and excluded"))
    return out


def _esp_name_problems(path: str, name: str, context: RuleContext) -> list[Problem]:
    known = context.esp_connections
    if known is None or name in known:
        return []
    if not known:
        return [
            (path, f"no ESP connection named {name!r}: this deployment has none (EVENTMAIL_ESP_CONNECTIONS)")
        ]
    hint = suggestion(name, sorted(known)) or f" (known: {', '.join(sorted(known))})"
    return [(path, f"no ESP connection named {name!r}{hint}")]


def _fallback_problems(rule: Rule, context: RuleContext) -> list[Problem]:
    out: list[Problem] = []
    seen = {rule.action.connection.label}
    for i, fallback in enumerate(rule.action.fallbacks):
        path = f"action.fallbacks.{i}.name"
        if fallback.label in seen:
            out.append(
                (path, f"{fallback.name!r} is already tried before (the connection or an earlier fallback)")
            )
        seen.add(fallback.label)
        out += _esp_name_problems(path, fallback.name, context)
    return out


def _connection_problems(rule: Rule, context: RuleContext) -> list[Problem]:
    connection = rule.action.connection
    if connection.type == "esp":
        return _esp_name_problems("action.connection.name", connection.name, context)
    out: list[Problem] = []
    if connection.login is not None and connection.password is None:
        out.append(("action.connection.password", "required when login is set"))
    if connection.password is not None and connection.login is None:
        out.append(("action.connection.login", "required when password is set"))
    if connection.password is not None:
        problem = stored_password_problem(
            connection.password,
            stored=context.stored,
            secret_key=context.secret_key,
            check_key=context.check_secret_key,
            secret_names=context.secret_names,
        )
        if problem:
            out.append(("action.connection.password", problem))
    return out


def _template_problems(rule: Rule) -> list[Problem]:
    action = rule.action
    out: list[Problem] = []
    for field in ("subject", "body"):
        for message in template_problems(getattr(action, field), rule.platform, action.use_twig):
            out.append((f"action.{field}", message))
    return out


def _warning_problems(rule: Rule) -> list[Problem]:
    warnings = rule.warnings
    if warnings is None or not warnings.enabled:
        return []
    out: list[Problem] = []
    if warnings.percent is None and warnings.count is None:
        out.append(("warnings", "set percent or count (or both) when enabled"))
    if not warnings.users and not warnings.emails:
        out.append(("warnings", "set users or emails (or both) when enabled: someone must get the alert"))
    return out
