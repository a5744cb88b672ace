"""The ways a training run stops early on its own: an unusable option, found before anything is
written, and a diverged loss."""


class OptionError(ValueError):
    """A value given for an option cannot be used; the message names the option. ``options``:
    the option names the message uses (TrainConfig's fields), each at its first occurrence, so
    that the command line can spell them as its own (``data_dir`` as ``--data-dir``)."""

    def __init__(self, message: str, options=()):
        super().__init__(message)
        self.options = tuple(options)


class ConfigError(OptionError):
    """A configuration value is impossible, or options do not go together."""


class TrainingDiverged(RuntimeError):
    """The training loss became inf or nan."""
