"""The ``eventmail`` command line."""
