"""Events from the lead platforms: triggers, the event model and the wire codecs."""

from consumer.events.model import Event
from consumer.events.triggers import CALL_LOGIC_TRIGGERS, LMS_TRIGGERS, Platform, triggers_for

__all__ = ["CALL_LOGIC_TRIGGERS", "LMS_TRIGGERS", "Event", "Platform", "triggers_for"]
