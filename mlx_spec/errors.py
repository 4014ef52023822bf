"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class MlxSpecError(Exception):
    """Bad input or an unsupported setup, explained in one line."""


class ModelLoadError(MlxSpecError):
    pass


class UnsupportedModelError(MlxSpecError):
    pass
