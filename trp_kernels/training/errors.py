"""The two ways a training run stops early on its own."""


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the option."""


class TrainingDiverged(RuntimeError):
    """The training loss became inf or nan."""
