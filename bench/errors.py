"""The harness's own failure type (the product's are in lazylayer.shared.errors)."""


class BenchError(Exception):
    """A benchmark precondition or step failed; the harness prints it as one clear line."""
