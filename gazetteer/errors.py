"""Exceptions of the gazetteer."""


class InputError(ValueError):
    """Bad input: the message names the file (if any), the row and the field."""


class ArtefactError(RuntimeError):
    """A built gazetteer on disk is unreadable, of another format, or fails its checksum."""
