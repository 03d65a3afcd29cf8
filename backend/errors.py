"""Errors that reach a user: each message says what was wrong and what to do."""


class InputError(ValueError):
    """Bad user input (media, subtitles, transcripts, corpora, labels).

    The message is shown as is in the app and the CLI, so it names the file or field, what was
    wrong with it, and how to fix it.
    """


class ModelUnavailableError(RuntimeError):
    """A model or checkpoint that a profile needs is not present and cannot be fetched."""
