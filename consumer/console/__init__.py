"""``eventmail console``: the admin screens of the product documents in a browser."""
