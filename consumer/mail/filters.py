"""Formatting filters for Twig-style templates: ``date``, ``number`` (alias ``number_format``), ``money``
and ``nl2br``.

They are pure functions of their arguments: no I/O, no locale or environment lookups (month and day
names are English), and every size argument is capped so that a filter never builds a huge string. A
missing value (an ``Undefined``) renders as an empty string, like a missing placeholder.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Undefined, pass_context, pass_eval_context
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from markupsafe import Markup, escape

from consumer.mail.errors import RenderError

MAX_DECIMALS = 12
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹"}
_ZERO_DECIMALS = {"JPY", "KRW", "VND", "CLP", "ISK"}


def _offset(d: datetime, colon: bool) -> str:
    delta = d.utcoffset()
    minutes = int(delta.total_seconds() // 60) if delta is not None else 0
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{':' if colon else ''}{mins:02d}"


def _hour12(d: datetime) -> int:
    return d.hour % 12 or 12


#: PHP/Twig ``date`` format characters.
_PHP: dict[str, Any] = {
    "d": lambda d: f"{d.day:02d}",
    "D": lambda d: _DAYS[d.weekday()][:3],
    "j": lambda d: str(d.day),
    "l": lambda d: _DAYS[d.weekday()],
    "N": lambda d: str(d.isoweekday()),
    "w": lambda d: str(d.isoweekday() % 7),
    "z": lambda d: str(d.timetuple().tm_yday - 1),
    "W": lambda d: f"{d.isocalendar().week:02d}",
    "F": lambda d: _MONTHS[d.month - 1],
    "M": lambda d: _MONTHS[d.month - 1][:3],
    "m": lambda d: f"{d.month:02d}",
    "n": lambda d: str(d.month),
    "t": lambda d: str(calendar.monthrange(d.year, d.month)[1]),
    "L": lambda d: "1" if calendar.isleap(d.year) else "0",
    "o": lambda d: str(d.isocalendar().year),
    "Y": lambda d: f"{d.year:04d}",
    "y": lambda d: f"{d.year % 100:02d}",
    "a": lambda d: "am" if d.hour < 12 else "pm",
    "A": lambda d: "AM" if d.hour < 12 else "PM",
    "g": lambda d: str(_hour12(d)),
    "G": lambda d: str(d.hour),
    "h": lambda d: f"{_hour12(d):02d}",
    "H": lambda d: f"{d.hour:02d}",
    "i": lambda d: f"{d.minute:02d}",
    "s": lambda d: f"{d.second:02d}",
    "u": lambda d: f"{d.microsecond:06d}",
    "v": lambda d: f"{d.microsecond // 1000:03d}",
    "e": lambda d: str(d.tzinfo) if d.tzinfo else "UTC",
    "T": lambda d: d.tzname() or "UTC",
    "P": lambda d: _offset(d, True),
    "O": lambda d: _offset(d, False),
    "c": lambda d: d.isoformat(timespec="seconds"),
    "r": lambda d: (
        f"{_DAYS[d.weekday()][:3]}, {d.day:02d} {_MONTHS[d.month - 1][:3]} {d.year:04d} "
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} {_offset(d, False)}"
    ),
    "U": lambda d: str(int(d.timestamp())),
}


def _php_format(moment: datetime, fmt: str) -> str:
    out: list[str] = []
    escaped = False
    for char in fmt:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            handler = _PHP.get(char)
            out.append(handler(moment) if handler else char)
    return "".join(out)


def _zone(name: str | None) -> tzinfo:
    if name is None or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RenderError(f"date: unknown time zone {name!r}") from None


def _to_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(float(value), UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise RenderError(f"date: {value[:40]!r} is not an ISO 8601 date") from None
    else:
        raise RenderError(f"date: cannot format a {type(value).__name__}")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def date(value: Any, fmt: str = "Y-m-d H:i", timezone: str | None = None) -> str:
    """Format a date: Twig/PHP characters (``"d/m/Y H:i"``) or strftime (``"%d %b %Y"``).

    Accepts a datetime, an ISO 8601 string (as event dates are) or epoch seconds. Shown in UTC unless
    ``timezone`` names another zone (``"Europe/Berlin"``).
    """
    if isinstance(value, Undefined):
        return str(value)
    if value is None or value == "":
        return ""
    moment = _to_datetime(value).astimezone(_zone(timezone))
    if "%" in fmt:
        return moment.strftime(fmt)
    return _php_format(moment, fmt)


def _as_number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise RenderError(f"{name}: {str(value)[:40]!r} is not a number") from None


def number(value: Any, decimals: int = 0, dec_point: str = ".", thousands_sep: str = ",") -> str:
    """``1234.5|number(2)`` -> ``1,234.50`` (Twig's ``number_format`` arguments)."""
    if isinstance(value, Undefined):
        return str(value)
    if value is None or value == "":
        return ""
    places = max(0, min(int(decimals), MAX_DECIMALS))
    text = f"{_as_number(value, 'number'):,.{places}f}"
    return text.replace(",", "\0").replace(".", dec_point[:4]).replace("\0", thousands_sep[:4])


@pass_context
def money(context: Context, value: Any, currency: str | None = None) -> str:
    """``price|money`` -> ``$12.50`` in the event's currency (or the one given)."""
    if isinstance(value, Undefined):
        return str(value)
    if value is None or value == "":
        return ""
    code = str(currency or context.get("currency") or "USD").upper()[:8]
    amount = _as_number(value, "money")
    decimals = 0 if code in _ZERO_DECIMALS else 2
    digits = f"{abs(amount):,.{decimals}f}"
    sign = "-" if amount < 0 and float(digits.replace(",", "")) != 0 else ""
    symbol = _SYMBOLS.get(code)
    return f"{sign}{symbol}{digits}" if symbol else f"{sign}{digits} {code}"


@pass_eval_context
def nl2br(eval_ctx: EvalContext, value: Any) -> str:
    """Line breaks as ``<br>`` (the text itself escaped when the body is HTML)."""
    if isinstance(value, Undefined):
        return str(value)
    if eval_ctx.autoescape:
        # The text is escaped first; only the <br> tags added here are markup.
        return Markup(str(escape(value)).replace("\n", "<br>\n"))  # noqa: S704
    return str(value).replace("\n", "<br>\n")


FILTERS: dict[str, Any] = {
    "date": date,
    "number": number,
    "number_format": number,
    "money": money,
    "nl2br": nl2br,
}
