"""The one exception type users see: the CLI prints its message as a single line and exits non-zero."""


class GemdeployError(Exception):
    """A problem with the user's input or files, explained in one line."""


def unknown_choice(kind: str, value: str, choices) -> GemdeployError:
    return GemdeployError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(choices))}")
