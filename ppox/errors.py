"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class PPOXError(Exception):
    """Bad input or an unrecoverable condition the user can fix (message is one plain sentence)."""


class ConfigError(PPOXError, ValueError):
    """An invalid hyperparameter or combination of hyperparameters."""


class EnvError(PPOXError):
    """An unknown environment id, an unsupported space, or an environment that misbehaves."""


class ModelFileError(PPOXError):
    """A model or checkpoint file that is missing, corrupt, unsafe or does not match."""


class TrainingHalted(PPOXError):
    """Training stopped on purpose (non-finite losses, env failures); a checkpoint was written."""
