"""The parts of ``eventmail demo``: everything local, end to end, in one command.

``plan`` makes the stream of sample events (and knows which rule each one should trigger),
``rules`` prepares the example rules for the local SMTP sinks, ``stack`` starts and stops the
processes (Kafka, SMTP sinks, ``eventmail run`` and ``eventmail aggregate``), ``traffic`` publishes
the events and watches the outcome, alert and dead-letter topics, ``view`` draws the terminal, and
``runner`` puts them together. Nothing here is used by the services themselves.
"""
