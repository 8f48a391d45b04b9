"""The one exception type that reaches the user as a plain line."""


class KdbenchError(Exception):
    """A problem with the user's input (spec, data files, command line).

    The command line prints ``kdbench: error: <message>`` on one line and
    exits with status 2, without a traceback. The message must say what is
    wrong, where (file and field) and what is allowed.
    """
