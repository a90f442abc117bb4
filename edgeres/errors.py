"""Errors that mean the user's input was wrong, and the exit codes the CLI maps every outcome to."""
from __future__ import annotations

import errno

# 1 is reserved for "a check failed" (the gate): CI must tell a regression from bad input or a crash.
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR = 0, 1, 2, 3

# OS refusals caused by the paths a user chose (a folder where a file goes, no permission, a full or
# read-only disk); other OS errors, such as a file edgeres wrote itself vanishing, are bugs.
_PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EROFS,
                          errno.ENOSPC, errno.ENAMETOOLONG, errno.ELOOP})


class UserInputError(ValueError):
    """Bad input from the user: the message says what was wrong and what was expected."""


class CheckFailed(Exception):
    """A check the user asked for did not pass (every export failed validation, the gate failed): exit 1."""


def os_error_as_user_input(e: OSError) -> UserInputError | None:
    """The UserInputError an OS refusal on a user's path amounts to, or None when it is not one."""
    if e.errno not in _PATH_ERRNOS:
        return None
    # A rename names its source (edgeres's temporary file) first and the user's target second.
    target = e.filename2 if e.filename2 is not None else e.filename
    where = f"{target}: " if target is not None else ""
    return UserInputError(f"{where}{e.strerror or e} (the operating system refused to read or write it; "
                          "choose another path)")
