"""The one exception type that user-facing code raises for bad input.

The CLI turns it into a single line on stderr and a non-zero exit; library callers can
catch it. Its message names the problem (and the offending path or value).
"""


class UnlearnableError(Exception):
    """Bad input or an impossible request; the message is shown to the user as is."""
