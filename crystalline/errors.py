"""The errors crystalline raises for bad input: each message names the problem and the fix."""


class CrystallineError(Exception):
    """Base of every user-facing error; the CLI prints it as one line and exits with 2."""


class ConfigError(CrystallineError, ValueError):
    """A configuration value is invalid."""


class DataError(CrystallineError, ValueError):
    """A corpus, tokenizer file or SQuAD file cannot be used."""


class CheckpointError(CrystallineError, ValueError):
    """A checkpoint is missing, truncated, tampered with or does not match the config."""


class TrainingError(CrystallineError, RuntimeError):
    """Training failed: a sphere raised, or the run was stopped in a way that lost no state."""


class RunFolderError(CrystallineError):
    """A run folder holds another run, is locked by another process, or cannot be written."""


class WriteError(CrystallineError, OSError):
    """A file could not be written (disk full, read-only, no permission); the old file is intact.

    WriteError(errno, message): still an OSError, so callers that tolerate I/O failures keep working."""

    def __str__(self) -> str:
        return str(self.strerror)


class RunError(CrystallineError, ValueError):
    """A run folder, its telemetry or its control file cannot be read or used."""
