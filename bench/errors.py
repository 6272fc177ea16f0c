"""One exception type for bad input: the CLI prints its message on one line and exits with code 2."""


class BenchError(Exception):
    """A user-facing error (bad config, unknown name, missing file). Never a bug in the suite."""
