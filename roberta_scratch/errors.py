"""The errors that stop a command with a message for the user, not a traceback.

A module of their own so that the data readers, the predictor and the trainer can all raise
them without importing one another (the CLI prints them as one line: cli.main).
"""


class TrainingError(RuntimeError):
    """Stops a run with a message for the user (NaN loss, mismatched resume, bad data, ...)."""
