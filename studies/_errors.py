"""The one domain error of the studies."""

from __future__ import annotations


class StudyError(Exception):
    """Bad settings or input, found before the compute: the command line prints it as one line
    and exits with status 2."""
