"""Exceptions of the model side. The CLI prints their message as one line and exits non-zero."""


class AcreError(Exception):
    """Base class for errors that are the user's input or environment, not a bug."""


class ModelLoadError(AcreError):
    """A model folder is missing, truncated, corrupt or of an unsupported architecture."""


class InputError(AcreError):
    """A prompt, document or question that cannot be processed (empty, too long, ...)."""


class DocumentError(AcreError):
    """A cached document is unknown or incompatible with the loaded model."""


class UnknownDocument(DocumentError):
    """No document with this id (or prefix, or name) in the store."""
