"""User-facing errors: one clear line, no traceback on the CLI (exit code 2)."""


class VitlabError(ValueError):
    """Bad input from the user (unknown model, missing path, wrong size, ...). The message is one line."""
