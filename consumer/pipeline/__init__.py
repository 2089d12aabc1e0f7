"""``eventmail run``: records in -> decode -> match -> render -> send -> outcome -> commit."""
