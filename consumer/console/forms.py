"""The "Add Rule" form: form fields to a rule document and back, and problems placed next to fields.

The form only collects fields; the document it builds is validated by
:func:`consumer.rules.validation.validate_rule`, the function behind ``eventmail rules validate``, so
the console shows the same problems with the same text. A password field is write-only: left empty
on an edit, the rule keeps the (sealed) password it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from email.utils import formataddr, getaddresses
from typing import Any

from consumer.rules.model import ID_FILTER_FIELDS, ManualConnection, Rule

#: Form field -> the rule document path its problems are reported under.
ID_FILTERS = tuple(ID_FILTER_FIELDS)
TEXT_FIELDS = (
    "id",
    "name",
    "platform",
    "level",
    "product_id",
    "campaign_id",
    "method",
    "tracking_strategy",
    "price_op",
    "price_value",
    "price_min",
    "price_max",
    "pools_include",
    "connection_type",
    "esp_name",
    "host",
    "port",
    "login",
    "encryption",
    "ca_file",
    "sender",
    "recipients",
    "cc",
    "bcc",
    "subject",
    "body",
    "content_type",
    "timeframe",
    "percent",
    "count",
    "min_events",
    "users",
    "emails",
    "frequency_minutes",
)
FLAGS = ("enabled", "use_twig", "warnings_enabled")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def _addresses(text: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for name, email in getaddresses([text.replace("\n", ",")]):
        if not email:
            continue
        out.append({"email": email, "name": name} if name else {"email": email})
    return out


def _number(text: str) -> Any:
    """A number when the text is one (the model reports anything else with its own message)."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def document_from_form(
    form: Mapping[str, str], triggers: Sequence[str], existing: Rule | None
) -> dict[str, Any]:
    """The rule document the form describes (not validated)."""

    def get(name: str) -> str:
        return (form.get(name) or "").strip()

    doc: dict[str, Any] = {
        "id": get("id"),
        "platform": get("platform"),
        "level": get("level"),
        "triggers": list(triggers),
        "enabled": form.get("enabled") == "on",
    }
    for name in ("name", "product_id", "campaign_id"):
        if get(name):
            doc[name] = get(name)
    filters: dict[str, Any] = {}
    for name in ("method", "tracking_strategy"):
        if get(name):
            filters[name] = get(name)
    for name in ID_FILTERS:
        include, exclude = _split(get(f"{name}_include")), _split(get(f"{name}_exclude"))
        if include or exclude:
            filters[name] = {k: v for k, v in (("include", include), ("exclude", exclude)) if v}
    if _split(get("pools_include")):
        filters["call_tracking_pools"] = {"include": _split(get("pools_include"))}
    op = get("price_op")
    if op == "range":
        filters["price"] = {"op": op, "min": _number(get("price_min")), "max": _number(get("price_max"))}
    elif op == "gt_zero":
        filters["price"] = {"op": op}
    elif op:
        filters["price"] = {"op": op, "value": _number(get("price_value"))}
    if filters:
        doc["filters"] = filters
    doc["action"] = _action(form, get, existing)
    if form.get("warnings_enabled") == "on":
        warnings: dict[str, Any] = {"enabled": True, "timeframe": get("timeframe") or "1h"}
        for name in ("percent", "count", "min_events", "frequency_minutes"):
            if get(name):
                warnings[name] = _number(get(name))
        if _split(get("users")):
            warnings["users"] = _split(get("users"))
        if _split(get("emails")):
            warnings["emails"] = _split(get("emails"))
        doc["warnings"] = warnings
    return doc


def _action(form: Mapping[str, str], get: Callable[[str], str], existing: Rule | None) -> dict[str, Any]:
    connection: dict[str, Any]
    if get("connection_type") == "manual":
        connection = {
            "type": "manual",
            "host": get("host"),
            "port": _number(get("port")),
            "encryption": get("encryption"),
        }
        if get("login"):
            connection["login"] = get("login")
        if get("ca_file"):
            connection["ca_file"] = get("ca_file")
        password = form.get("password") or ""
        if password:
            connection["password"] = password
        elif existing is not None and isinstance(existing.action.connection, ManualConnection):
            kept = existing.action.connection.password
            if kept is not None:
                connection["password"] = kept.get_secret_value()  # sealed: enc:... or secret:NAME
    else:
        connection = {"type": "esp", "name": get("esp_name") or "default"}
    senders = _addresses(get("sender"))
    action: dict[str, Any] = {
        "connection": connection,
        "sender": senders[0] if len(senders) == 1 else get("sender"),
        "recipients": _addresses(get("recipients")),
        "subject": form.get("subject") or "",
        "body": form.get("body") or "",
        "use_twig": form.get("use_twig") == "on",
        "content_type": get("content_type") or "text",
    }
    for name in ("cc", "bcc"):
        if _addresses(get(name)):
            action[name] = _addresses(get(name))
    return action


def form_from_rule(rule: Rule) -> dict[str, Any]:
    """The form's values for an existing rule (the password field stays empty)."""
    f = rule.filters
    action = rule.action
    values: dict[str, Any] = {
        "id": rule.id,
        "name": rule.name or "",
        "platform": rule.platform.value,
        "level": rule.level.value,
        "product_id": rule.product_id or "",
        "campaign_id": rule.campaign_id or "",
        "triggers": list(rule.triggers),
        "enabled": rule.enabled,
        "method": f.method.value if f.method else "",
        "tracking_strategy": f.tracking_strategy.value if f.tracking_strategy else "",
        "pools_include": ", ".join(f.call_tracking_pools.include) if f.call_tracking_pools else "",
        "sender": formataddr((action.sender.name or "", action.sender.email)),
        "recipients": ", ".join(formataddr((a.name or "", a.email)) for a in action.recipients),
        "cc": ", ".join(formataddr((a.name or "", a.email)) for a in action.cc),
        "bcc": ", ".join(formataddr((a.name or "", a.email)) for a in action.bcc),
        "subject": action.subject,
        "body": action.body,
        "use_twig": action.use_twig,
        "content_type": action.content_type.value,
    }
    for name in ID_FILTERS:
        id_filter = getattr(f, name)
        values[f"{name}_include"] = ", ".join(id_filter.include) if id_filter else ""
        values[f"{name}_exclude"] = ", ".join(id_filter.exclude) if id_filter else ""
    price = f.price
    values["price_op"] = price.op if price is not None else ""
    values["price_value"] = getattr(price, "value", "")
    values["price_min"] = getattr(price, "min", "")
    values["price_max"] = getattr(price, "max", "")
    connection = action.connection
    if isinstance(connection, ManualConnection):
        values |= {
            "connection_type": "manual",
            "host": connection.host,
            "port": connection.port,
            "login": connection.login or "",
            "encryption": connection.encryption.value,
            "ca_file": connection.ca_file or "",
            "has_password": connection.password is not None,
        }
    else:
        values |= {"connection_type": "esp", "esp_name": connection.name}
    warnings = rule.warnings
    if warnings is not None:
        values |= {
            "warnings_enabled": warnings.enabled,
            "timeframe": warnings.timeframe,
            "percent": "" if warnings.percent is None else warnings.percent,
            "count": "" if warnings.count is None else warnings.count,
            "min_events": "" if warnings.min_events is None else warnings.min_events,
            "users": ", ".join(warnings.users),
            "emails": ", ".join(warnings.emails),
            "frequency_minutes": warnings.frequency_minutes,
        }
    return values


#: Rule document paths (prefixes) -> the form field a problem is shown next to.
_FIELD_OF_PATH = {
    "action.connection.password": "password",
    "action.connection.host": "host",
    "action.connection.port": "port",
    "action.connection.login": "login",
    "action.connection.encryption": "encryption",
    "action.connection.ca_file": "ca_file",
    "action.connection.name": "esp_name",
    "action.connection": "connection_type",
    "action.sender": "sender",
    "action.recipients": "recipients",
    "action.cc": "cc",
    "action.bcc": "bcc",
    "action.subject": "subject",
    "action.body": "body",
    "action.content_type": "content_type",
    "action.use_twig": "use_twig",
    "filters.price": "price_op",
    "filters.call_tracking_pools": "pools_include",
    "filters.method": "method",
    "filters.tracking_strategy": "tracking_strategy",
    **{f"filters.{name}.include": f"{name}_include" for name in ID_FILTERS},
    **{f"filters.{name}.exclude": f"{name}_exclude" for name in ID_FILTERS},
    **{f"filters.{name}": f"{name}_include" for name in ID_FILTERS},
    "warnings.percent": "percent",
    "warnings.count": "count",
    "warnings.min_events": "min_events",
    "warnings.users": "users",
    "warnings.emails": "emails",
    "warnings.timeframe": "timeframe",
    "warnings.frequency_minutes": "frequency_minutes",
    "warnings": "warnings_enabled",
    "triggers": "triggers",
    "product_id": "product_id",
    "campaign_id": "campaign_id",
    "platform": "platform",
    "level": "level",
    "name": "name",
    "id": "id",
    "enabled": "enabled",
}


def field_for(path: str) -> str | None:
    """The form field a problem at document ``path`` belongs to (longest prefix), or None."""
    best: str | None = None
    for prefix in _FIELD_OF_PATH:
        if (path == prefix or path.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return _FIELD_OF_PATH[best] if best is not None else None


def place_problems(problems: Sequence[tuple[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """(field -> problem texts, problems with no field): each text is ``path: message`` as
    ``eventmail rules validate`` prints it."""
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    for path, message in problems:
        text = f"{path}: {message}" if path else message
        name = field_for(path)
        if name is None:
            general.append(text)
        else:
            by_field.setdefault(name, []).append(text)
    return by_field, general
