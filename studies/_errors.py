"""The one domain error of the studies."""

from __future__ import annotations


class StudyWarning(UserWarning):
    """Something a user should know about a run (an attack that cannot use its budget, an ε made
    for the other image type, a singular Gram): recorded in the results' ``warnings`` and raised
    as a Python warning when found, which the command line prints at once."""


class StudyError(Exception):
    """Bad settings or input, found before the compute: the command line prints it as one line
    and exits with status 2."""
