"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class L2VError(Exception):
    """Base class: the message names the bad input (file, line, model, option) and says what to do."""


class ModelNotFoundError(L2VError):
    pass


class UnsupportedModelError(L2VError):
    """The architecture cannot be made bidirectional (or otherwise used) safely."""


class InputFileError(L2VError):
    pass
