"""Outcome and alert records: what the pipeline did, and what the aggregator warned about."""

from consumer.outcomes.model import Alert, AlertKind, ErrorCount, Outcome, OutcomeStatus, SourcePosition

__all__ = ["Alert", "AlertKind", "ErrorCount", "Outcome", "OutcomeStatus", "SourcePosition"]
