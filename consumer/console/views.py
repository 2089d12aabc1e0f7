"""The screens: rules (list, add/edit with live preview, details, enable/disable, delete), the SMTP
log, alerts, usage and connections. Validation, preview and publishing are the CLI's own functions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import yaml
from pydantic import SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from consumer.cli.common import parse_duration
from consumer.console.data import ConsoleUnavailable
from consumer.console.forms import document_from_form, form_from_rule, place_problems
from consumer.errors import CodecError, EventmailError, MailError, SecretError
from consumer.events.codec import EventDecoder
from consumer.events.placeholders import DATA_PREFIX, placeholders_for
from consumer.events.triggers import CALL_LOGIC_TRIGGERS, LMS_TRIGGERS, Platform
from consumer.mail.connections import connection_params
from consumer.mail.errors import MessageError, RenderError, SendError
from consumer.mail.params import ConnectionParams
from consumer.mail.testmail import default_sender, send_test_mail
from consumer.outcomes.model import OutcomeStatus
from consumer.rules.checks import RuleContext
from consumer.rules.matching import CompiledRule, compile_rule
from consumer.rules.model import EspConnectionRef, ManualConnection, Rule
from consumer.rules.preview import MailPreview, preview
from consumer.rules.validation import RuleValidationError, validate_rule
from consumer.settings import Encryption

if TYPE_CHECKING:
    from consumer.console.app import Console

PRICE_PER_EVENT_NOTE = "Rules with warning notifications are billed $0.0001 per event."
NEW_RULE: dict[str, Any] = {
    "enabled": True,
    "platform": "lms",
    "level": "product",
    "connection_type": "esp",
    "esp_name": "default",
    "content_type": "text",
    "timeframe": "1h",
    "frequency_minutes": 30,
    "triggers": [],
}


async def home(console: Console, request: Request) -> Response:
    return RedirectResponse("/rules", status_code=303)


# --- rules -------------------------------------------------------------------------------------------


async def rules_list(console: Console, request: Request) -> Response:
    query = request.query_params.get("q", "").strip().lower()
    platform = request.query_params.get("platform", "")
    try:
        index = console.data.rules()
        counts = console.data.counts()
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    rows = []
    for rule in index:
        if platform and rule.platform.value != platform:
            continue
        haystack = " ".join([rule.rule_id, rule.name or "", *rule.triggers, rule.scope[1]]).lower()
        if query and query not in haystack:
            continue
        rows.append((rule, counts.get(rule.rule_id)))
    return console.page(request, "rules.html", rows=rows, q=query, platform=platform, total=len(index))


def _form_context(console: Console, values: dict[str, Any], **extra: Any) -> dict[str, Any]:
    platform = values.get("platform") or "lms"
    try:
        placeholders = placeholders_for(platform)
    except ValueError:
        placeholders = placeholders_for(Platform.LMS)
    return {
        "values": values,
        "lms_triggers": LMS_TRIGGERS,
        "call_logic_triggers": CALL_LOGIC_TRIGGERS,
        "esp_options": [(name, name) for name in sorted(console.settings.esp_connections)],
        "placeholders": placeholders,
        "data_placeholder": f"{DATA_PREFIX}KEY",
        "price_note": PRICE_PER_EVENT_NOTE,
        "errors": {},
        "general_errors": [],
        **extra,
    }


def _sample_event(console: Console, values: dict[str, Any]) -> str:
    platform = Platform(values.get("platform") or "lms")
    trigger = (values.get("triggers") or ["lead_sold"])[0]
    try:
        recent = console.data.recent_event(platform, trigger)
    except EventmailError:
        recent = None
    if recent is not None:
        return json.dumps(recent.wire_dict(), indent=2, default=str)
    sample: dict[str, Any] = {
        "event_id": "example-1",
        "trigger": trigger,
        "occurred_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "product_id": values.get("product_id") or "p-1",
        "campaign_id": values.get("campaign_id") or "c-1",
        "lead_id": "L-1",
        "publisher_id": "pub-1",
        "buyer_id": "buyer-1",
        "price": 12.5,
        "data": {"first_name": "Ada"},
    }
    return json.dumps(sample, indent=2)


async def rule_new(console: Console, request: Request) -> Response:
    values = dict(NEW_RULE)
    context = _form_context(console, values, creating=True, sample_event=_sample_event(console, values))
    return console.page(request, "rule_form.html", **context)


def _requested_rule(console: Console, request: Request) -> CompiledRule | Response:
    """The rule of the path, or the page to answer instead (404, or the broker banner)."""
    rule_id = request.path_params["rule_id"]
    try:
        found = console.data.rule(rule_id)
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    return found if found is not None else PlainTextResponse(f"no rule {rule_id}", status_code=404)


async def rule_edit(console: Console, request: Request) -> Response:
    found = _requested_rule(console, request)
    if isinstance(found, Response):
        return found
    values = form_from_rule(found.rule)
    context = _form_context(console, values, creating=False, sample_event=_sample_event(console, values))
    return console.page(request, "rule_form.html", **context)


def _submitted(form: Any) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {
        key: str(form.get(key)) for key in form if key not in ("trigger", "password", "csrf")
    }
    triggers = list(dict.fromkeys(str(t) for t in form.getlist("trigger")))
    values["triggers"] = triggers
    for flag in ("enabled", "use_twig", "warnings_enabled"):
        values[flag] = form.get(flag) == "on"
    return values, triggers


def _existing(console: Console, form: Any) -> Rule | None:
    original = str(form.get("original_id") or "")
    if not original:
        return None
    found = console.data.rule(original)
    return found.rule if found is not None else None


def _validate(console: Console, form: Any) -> tuple[dict[str, Any], Rule | None, list[tuple[str, str]]]:
    values, triggers = _submitted(form)
    existing = _existing(console, form)
    values["has_password"] = bool(form.get("password")) or (
        existing is not None and getattr(existing.action.connection, "password", None) is not None
    )
    raw = {key: str(form.get(key) or "") for key in form if key != "trigger"}
    document = document_from_form(raw, triggers, existing)
    try:
        rule = validate_rule(document, RuleContext.for_files(console.settings), document.get("id") or "?")
    except RuleValidationError as exc:
        return values, None, exc.problems
    if existing is None and console.data.rule(rule.id) is not None:
        return values, None, [("id", f"a rule {rule.id} exists already: edit it, or choose another id")]
    return values, rule, []


async def rule_preview(console: Console, request: Request) -> Response:
    form = await request.form()
    try:
        values, rule, problems = _validate(console, form)
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    sample = str(form.get("sample_event") or "")
    result: dict[str, Any] = {}
    if rule is not None:
        try:
            event = EventDecoder().decode(rule.platform, sample.encode())
            shown = preview(compile_rule(rule), event)
            result = {"mail": shown} if isinstance(shown, MailPreview) else {"no_match": shown.reason}
        except CodecError as exc:
            result = {"event_error": f"sample event: {exc}"}
        except (RenderError, MessageError) as exc:
            result = {"build_error": f"the mail cannot be built: {exc}"}
    errors, general = place_problems(problems)
    context = _form_context(
        console,
        values,
        creating=not form.get("original_id"),
        sample_event=sample,
        errors=errors,
        general_errors=general,
        preview=result,
    )
    return console.page(request, "rule_form.html", status_code=422 if problems else 200, **context)


async def rule_save(console: Console, request: Request) -> Response:
    form = await request.form()
    try:
        values, rule, problems = _validate(console, form)
        if rule is not None:
            console.data.save(rule, author=request.state.identity.name)
            return RedirectResponse(f"/rules/{rule.id}", status_code=303)
    except SecretError as exc:
        problems = [("action.connection.password", str(exc))]
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    except EventmailError as exc:
        problems = [("", str(exc))]
    errors, general = place_problems(problems)
    context = _form_context(
        console,
        values,
        creating=not form.get("original_id"),
        sample_event=str(form.get("sample_event") or ""),
        errors=errors,
        general_errors=general,
    )
    return console.page(request, "rule_form.html", status_code=422, **context)


def _document(rule: Rule) -> dict[str, Any]:
    """The rule as shown and downloaded: passwords masked (``enc:…``, ``secret:NAME``)."""
    return rule.model_dump(mode="json", exclude_none=True)


async def rule_detail(console: Console, request: Request) -> Response:
    rule_id = request.path_params["rule_id"]
    try:
        found = console.data.rule(rule_id)
        if found is None:
            return PlainTextResponse(f"no rule {rule_id}", status_code=404)
        history = console.data.history(rule_id)
        counts = console.data.counts().get(rule_id)
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    last = history[-1] if history else None
    text = yaml.safe_dump(_document(found.rule), sort_keys=False, allow_unicode=True)
    return console.page(request, "rule_detail.html", rule=found, yaml_text=text, last=last, counts=counts)


async def rule_yaml(console: Console, request: Request) -> Response:
    found = _requested_rule(console, request)
    if isinstance(found, Response):
        return found
    text = yaml.safe_dump(_document(found.rule), sort_keys=False, allow_unicode=True)
    headers = {"content-disposition": f'attachment; filename="{found.rule_id}.yaml"'}
    return PlainTextResponse(text, media_type="application/yaml", headers=headers)


async def rule_enabled(console: Console, request: Request) -> Response:
    rule_id = request.path_params["rule_id"]
    form = await request.form()
    try:
        found = console.data.rule(rule_id)
        if found is None:
            return PlainTextResponse(f"no rule {rule_id}", status_code=404)
        changed = found.rule.model_copy(update={"enabled": form.get("enabled") == "on"})
        console.data.save(changed, author=request.state.identity.name)
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    return RedirectResponse(str(form.get("back") or "/rules"), status_code=303)


async def rule_delete_confirm(console: Console, request: Request) -> Response:
    rule_id = request.path_params["rule_id"]
    return console.page(request, "delete.html", rule_id=rule_id)


async def rule_delete(console: Console, request: Request) -> Response:
    rule_id = request.path_params["rule_id"]
    try:
        console.data.delete(rule_id, author=request.state.identity.name)
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    return RedirectResponse("/rules", status_code=303)


# --- SMTP log, alerts, usage, connections ------------------------------------------------------------


def _since(request: Request, default: str) -> tuple[str, float, str | None]:
    text = request.query_params.get("since", default) or default
    try:
        return text, parse_duration(text), None
    except click.BadParameter as exc:
        return default, parse_duration(default), str(exc.message)


async def smtp_log(console: Console, request: Request) -> Response:
    since_text, seconds, since_error = _since(request, "1h")
    rule = request.query_params.get("rule", "").strip()
    status = request.query_params.get("status", "")
    live = request.query_params.get("live", "1") != "0"
    try:
        outcomes = console.data.outcomes(seconds)
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    shown = [
        o for o in outcomes if (not rule or o.rule_id == rule) and (not status or o.status.value == status)
    ]
    return console.page(
        request,
        "log.html",
        outcomes=shown,
        rule=rule,
        status=status,
        since=since_text,
        since_error=since_error,
        statuses=[s.value for s in OutcomeStatus],
        live=live,
    )


async def outcome_detail(console: Console, request: Request) -> Response:
    partition, offset = request.path_params["partition"], request.path_params["offset"]
    try:
        outcome = console.data.outcome_at(partition, offset)
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    if outcome is None:
        return PlainTextResponse("no such outcome", status_code=404)
    fields = outcome.model_dump(mode="json")
    return console.page(request, "outcome.html", outcome=outcome, fields=fields)


async def alerts(console: Console, request: Request) -> Response:
    since_text, seconds, since_error = _since(request, "7d")
    try:
        found = console.data.alerts(seconds)
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    return console.page(request, "alerts.html", alerts=found, since=since_text, since_error=since_error)


async def usage(console: Console, request: Request) -> Response:
    from consumer.aggregator.usage import PRICE_PER_EVENT

    since_text, seconds, since_error = _since(request, "30d")
    try:
        meter = console.data.usage(seconds)
    except ConsoleUnavailable as exc:
        return console.unavailable(request, exc)
    return console.page(
        request,
        "usage.html",
        rules=meter.rules(),
        total_events=meter.total_events,
        total_cost=meter.total_cost,
        price=PRICE_PER_EVENT,
        since=since_text,
        since_error=since_error,
    )


def _connection_rows(console: Console) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "host": esp.host,
            "port": esp.port,
            "encryption": esp.encryption.value,
            "login": esp.login or "",
        }
        for name, esp in sorted(console.settings.esp_connections.items())
    ]


async def connections(console: Console, request: Request) -> Response:
    return console.page(request, "connections.html", connections=_connection_rows(console), values={})


_DEFAULT_PORTS = {Encryption.NONE: 25, Encryption.TLS: 587, Encryption.SSL: 465}


async def connection_test(console: Console, request: Request) -> Response:
    """The test email button: one message, each step shown as `eventmail smtp test` prints it."""
    form = await request.form()
    values = {key: str(form.get(key) or "") for key in form if key not in ("csrf", "password")}
    steps: list[str] = []
    outcome: str
    ok = False
    try:
        params = _test_params(console, form)
        sender = default_sender(values.get("sender") or None, params, console.settings)
        to = tuple(address.strip() for address in values.get("to", "").split(",") if address.strip())
        if sender is None:
            outcome = "give a sender: the login is not an address and EVENTMAIL_ALERTS__SENDER is not valid"
        elif not to:
            outcome = "give at least one recipient"
        else:
            steps.append(f"connection {params.name}: {params.address}, encryption {params.encryption.value}")
            subject = values.get("subject") or "eventmail test message"
            result, message_id = await send_test_mail(
                console.settings, params, sender, to, subject, steps.append
            )
            refused = "".join(f"; refused {address}: {reply}" for address, reply in result.refused.items())
            outcome = f"sent {message_id} to {', '.join(result.accepted)}{refused}"
            ok = not result.refused
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ())) or "connection"
        outcome = f"the connection is not valid: {where}: {problem.get('msg')}"
    except ValueError as exc:
        outcome = f"the connection is not valid: {exc}"
    except SendError as exc:
        outcome = f"smtp test failed: {exc}"
    except (MailError, SecretError) as exc:
        outcome = f"smtp test: {exc}"
    return console.page(
        request,
        "connections.html",
        connections=_connection_rows(console),
        values=values,
        steps=steps,
        outcome=outcome,
        ok=ok,
    )


def _test_params(console: Console, form: Any) -> ConnectionParams:
    name = str(form.get("connection") or "")
    if name and name != "manual":
        if name not in console.settings.esp_connections:
            raise ValueError(f"no ESP connection named {name!r}")
        return connection_params(console.settings, EspConnectionRef(type="esp", name=name))
    mode = Encryption(str(form.get("encryption") or "tls"))
    port = str(form.get("port") or "") or str(_DEFAULT_PORTS[mode])
    login = str(form.get("login") or "") or None
    password = str(form.get("password") or "")
    ref = ManualConnection(
        type="manual", host=str(form.get("host") or ""), port=int(port), encryption=mode, login=login
    )
    return connection_params(console.settings, ref, password=SecretStr(password) if password else None)
