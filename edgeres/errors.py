"""Errors that mean the user's input was wrong; the CLI turns them into exit code 2."""


class UserInputError(ValueError):
    """Bad input from the user: the message says what was wrong and what was expected."""
