"""The one error type a user can cause.

Anything the user can fix (a bad file, a bad config key, missing weights, an unreachable store) is raised as
:class:`CxrfaError` with a single line that names the thing and how to fix it. The CLI prints that line and
exits with status 2. Bugs stay ordinary exceptions and show a traceback.
"""

from __future__ import annotations


class CxrfaError(Exception):
    """A user-fixable problem; ``str(err)`` is the one line shown to the user."""

    exit_code = 2
