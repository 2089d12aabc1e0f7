"""README.md must work as written.

A ```sh block right after a ``<!-- test: run -->`` line is run here, in the order of the README, by
``bash -euo pipefail`` from the repository root, against the session's Kafka broker, its Schema
Registry and a real SMTP server; it must exit 0. The environment is what a reader's shell would
have after following the README: ``.venv/bin`` first on ``PATH`` and the ``EVENTMAIL_*`` settings of a
deployment (the session broker, topics of this test, ``default`` ESP connection = the test's SMTP
server, the registry URL). Blocks that start long-running services or call ``make`` are not marked.

Every other ``eventmail`` command line and inline command of the README is checked without running
it: the sub-command exists and so does each of its ``--options``; every ``make`` target exists; every
relative link resolves, anchors included; the trigger lists match the code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from consumer.cli.main import _mount, cli
from consumer.events.codec import EventDecoder
from consumer.events.registry import registry_lookup
from consumer.events.triggers import CALL_LOGIC_TRIGGERS, LMS_TRIGGERS, Platform
from consumer.settings import SchemaRegistrySettings, SmtpSettings
from tests.support.kafka import TopicFactory, consume_all
from tests.support.service import Deployment
from tests.support.smtp import SMTPTestServer
from tests.test_dashboards import github_anchor

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_MARK = "<!-- test: run -->"
_BLOCK = re.compile(r"^(?P<mark><!-- test: run -->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    runnable: bool
    line: int


def blocks(text: str | None = None) -> list[Block]:
    text = README.read_text(encoding="utf-8") if text is None else text
    return [
        Block(
            m.group("lang"), m.group("body"), m.group("mark") is not None, text.count("\n", 0, m.start()) + 1
        )
        for m in _BLOCK.finditer(text)
    ]


def runnable() -> list[Block]:
    return [b for b in blocks() if b.runnable]


def test_marked_blocks_are_shell_and_never_start_services_or_make() -> None:
    text = README.read_text(encoding="utf-8")
    marks = re.findall(rf"^{re.escape(RUN_MARK)}$", text, re.M)
    assert len(marks) == len(runnable()), "a run mark must sit right above a ```sh block"
    assert len(runnable()) >= 8
    for block in runnable():
        assert block.lang == "sh", f"line {block.line}"
        for line in block.body.splitlines():
            assert not re.match(r"\s*make\b", line), f"line {block.line}: no make in a tested block"
            assert not re.match(r"\s*eventmail (run|aggregate|demo)\b", line), f"line {block.line}: {line}"
            assert "--follow" not in line, f"line {block.line}: {line}"
    covered = " ".join(block.body for block in runnable())
    for command in ("rules validate", "rules apply", "rules list", "rules get", "rules delete",
                    "placeholders", "smtp test", "logs", "usage"):  # fmt: skip
        assert f"eventmail {command}" in covered, f"no tested example of eventmail {command}"


def test_runnable_blocks_work_against_the_session_broker(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    smtp_server: SMTPTestServer,
    schema_registry_url: str,
    tmp_path: Path,
) -> None:
    deployment = Deployment.create(kafka_bootstrap, topic_factory, partitions=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTMAIL_")}
    env.update(deployment.env())
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        EVENTMAIL_ESP_CONNECTIONS=json.dumps(
            {"default": {"host": smtp_server.host, "port": smtp_server.port, "encryption": "none"}}
        ),
        EVENTMAIL_SCHEMA_REGISTRY__URL=schema_registry_url,
        COLUMNS="120",
    )
    for block in runnable():
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.body],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, (
            f"README line {block.line} exited {result.returncode}:\n{block.body}\n{result.stderr}"
        )
        assert result.stdout.strip() or result.stderr.strip(), f"README line {block.line} printed nothing"

    # The blocks did what the README says they do.
    rules = consume_all(kafka_bootstrap, deployment.topics["rules"])
    assert [(m.key(), m.value() is None) for m in rules] == [
        (b"lms-auto-lead-sold", False),  # rules apply
        (b"lms-auto-lead-sold", True),  # rules delete: a tombstone
    ]
    assert [m.rcpt_tos for m in smtp_server.messages] == [["you@example.com"]]
    lookup = registry_lookup(SchemaRegistrySettings(url=schema_registry_url))
    decoder = EventDecoder(writer_schema=lookup)
    events = [
        decoder.decode(Platform.LMS, m.value(), m.headers())
        for m in consume_all(kafka_bootstrap, deployment.topics["lms"])
    ]
    assert [e.event_id for e in events] == [
        "ev-2026-000123",  # the Python client
        "ev-2026-000125",  # kcat: one record per line, keyed, with the content-type header
        "ev-2026-000126",
        "ev-2026-000124",  # the Confluent wire format
    ]
    assert {e.product_id for e in events} == {"auto-insurance"}
    kcat_records = consume_all(kafka_bootstrap, deployment.topics["lms"])[1:3]
    assert [m.key() for m in kcat_records] == [b"L-125", b"L-126"]
    assert all(dict(m.headers() or [])["content-type"] == b"application/json" for m in kcat_records)


# --- checked without running -------------------------------------------------------------------------


def _commands() -> list[tuple[int, str]]:
    """(line, command) of every `eventmail ...` in a shell block or an inline code span."""
    text = README.read_text(encoding="utf-8")
    found: list[tuple[int, str]] = []
    for block in blocks(text):
        if block.lang != "sh":
            continue
        for offset, line in enumerate(block.body.splitlines(), start=1):
            command = line.split(" #", 1)[0].strip()
            if re.match(r"(\.venv/bin/)?eventmail( |$)", command):
                found.append((block.line + offset, command))
    for match in re.finditer(r"`((?:\.venv/bin/)?eventmail(?: [^`]*)?)`", text):
        found.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


def _resolve(line: int, command: str) -> None:
    _mount()
    words = shlex.split(re.split(r"\s\|\s", command)[0])[1:]
    current: click.Command = cli
    ctx = click.Context(cli)
    where = "eventmail"
    for word in words:
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            known = {opt for param in current.params for opt in (*param.opts, *param.secondary_opts)}
            known |= {"--help", "-h"}
            assert name in known, f"README line {line}: `{where}` has no option {name} ({command})"
            continue
        if isinstance(current, click.Group):
            sub = current.get_command(ctx, word)
            if sub is not None:
                current, where = sub, f"{where} {word}"
                continue
            assert word.isupper() or word in ("FILE...", "RULE_ID...") or not current.commands, (
                f"README line {line}: `{where}` has no command {word!r} ({command})"
            )


def test_every_eventmail_command_and_option_exists() -> None:
    commands = _commands()
    assert len(commands) >= 30
    for line, command in commands:
        _resolve(line, command)
    mentioned = {" ".join(shlex.split(c)[1:3]) for _, c in commands}
    for name in ("demo", "run", "aggregate", "usage", "logs", "placeholders"):
        assert any(m.startswith(name) for m in mentioned), f"the README never mentions eventmail {name}"


def test_every_smtp_setting_is_documented() -> None:
    text = README.read_text(encoding="utf-8")
    rows = "\n".join(line for line in text.splitlines() if line.startswith("| `EVENTMAIL_SMTP__"))
    for name in SmtpSettings.model_fields:
        assert f"EVENTMAIL_SMTP__{name.upper()}" in rows or f"__{name.upper()}`" in rows, name


def test_every_make_target_exists() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    text = README.read_text(encoding="utf-8")
    used = set(re.findall(r"(?:^|`|\s)make ([a-z][\w-]*)", text, re.M))
    assert {"demo", "test", "install", "kafka-up", "kafka-down", "registry-up", "lint"} <= used
    assert used <= targets, f"not in the Makefile: {used - targets}"


def _anchors(path: Path) -> set[str]:
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", path.read_text(encoding="utf-8"), re.M)}


def test_relative_links_and_anchors_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert len(links) >= 15
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / target if target else README
        assert path.exists(), f"README links to missing {target}"
        if anchor:
            assert anchor in _anchors(path), f"README links to missing #{anchor} of {path.name}"


def test_the_trigger_lists_match_the_code() -> None:
    text = README.read_text(encoding="utf-8")
    for label, expected in (("LMS", LMS_TRIGGERS), ("Call Logic", CALL_LOGIC_TRIGGERS)):
        match = re.search(rf"^- {label}: (.+?)(?=^\S|^- |\n\n)", text, re.M | re.S)
        assert match, f"no trigger list for {label}"
        assert tuple(re.findall(r"`(\w+)`", match.group(1))) == expected, label
