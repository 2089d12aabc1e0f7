"""Rules: the document model and its validation, password sealing, matching, and the rules topic.

Data flows one way: files or topic records -> :mod:`validation` -> :mod:`matching` (compiled,
indexed) -> the pipeline. Modules: ``model`` (the document), ``checks`` (cross-field rules),
``templates`` (placeholders), ``secrets`` (passwords), ``codec`` (the record format), ``matching``
(``RuleIndex``), ``store`` (``RuleStore``), ``publish`` (CLI writes), ``schema`` (JSON Schema export).
Nothing in this package logs, prints or raises with a password in clear text.
"""

from __future__ import annotations

import logging

# A library logs through the application's handlers; without any (the CLI), it stays quiet.
logging.getLogger(__name__).addHandler(logging.NullHandler())
