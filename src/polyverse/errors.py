"""User-facing errors: each carries a one-line message that the CLI and the server show as is."""


class PolyverseError(Exception):
    """Bad input or an unusable model: the message says what and how to fix it."""


class ConfigError(PolyverseError, ValueError):
    """An option out of range or of the wrong kind."""


class ModelNotFound(PolyverseError):
    """A model name or path that names no loadable model."""
