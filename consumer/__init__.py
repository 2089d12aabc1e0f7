"""eventmail: rule-driven email from Kafka event streams."""

__version__ = "0.1.0"
