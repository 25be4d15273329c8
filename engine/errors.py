"""Errors a user can act on: each carries one clear sentence, never a stack trace."""


class UserError(ValueError):
    """A problem with what the user asked for; ``str(error)`` is the sentence to show."""


class ModelUnavailableError(UserError):
    """The requested model cannot be had on this machine."""


class AudioError(UserError):
    """The audio cannot be used: unreadable, empty, silent, too long, or not audio at all."""


class DatasetError(UserError):
    """An evaluation folder is missing, empty, or its transcripts cannot be matched to audio."""
