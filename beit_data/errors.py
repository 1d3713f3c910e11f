"""Errors that carry one clear line for the user: what, which file, what to do."""
from __future__ import annotations


class BeitDataError(Exception):
    """A problem with the user's input or options; the message is the whole story."""


class Quarantined(Exception):
    """An input image that cannot be written; the message is the reason recorded in the manifest."""
