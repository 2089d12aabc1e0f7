"""``eventmail aggregate``: windowed warning alerts per rule, and usage metering.

Layers, each usable alone:

* :mod:`.windows` and :mod:`.thresholds`: pure window arithmetic and alert decisions;
* :mod:`.state`: one outcome partition's windows and alert states (pure);
* :mod:`.service`: the consumer group over the outcome topic, state rebuilt on assignment;
* :mod:`.notify` and :mod:`.smtp`: alert emails; :mod:`.decisions`: the alerts topic read back;
* :mod:`.usage`: billable events; :mod:`.runner`: start-up, HTTP endpoint, shutdown.

Nothing in this package keeps state on local disk: everything is rebuilt from the topics.
"""
