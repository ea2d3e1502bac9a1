"""What lofr raises when the *user's input* is wrong, as opposed to a bug.

Every such exception derives from :class:`LofrUserError`; the command line (``lofr.cli.main``) prints
it as one line, ``lofr <command>: error: <what> (<file / id>)``, on stderr and exits with status 2
(``--debug`` or ``LOFR_DEBUG=1``: the traceback too). Anything else is unexpected and keeps its
traceback. The families:

* ``lofr.data.errors.DataError``: a dataset, annotation or image file is missing, malformed or in
  the wrong layout (names the file and the annotation / image id);
* ``lofr.config_utils.ConfigError``: a config key or value, or a setting that cannot work (an empty
  split, a batch larger than the training set, a resume of a different run);
* ``lofr.engine.checkpoint.CheckpointError``: a checkpoint that is missing or not a plain weights file;
* :class:`UsageError`: a bad argument value (``--box a,b``);
* :class:`OutputExistsError`: the output folder already holds a run or a dataset.

Each also derives from the built-in exception it used to be (``ValueError``, ``RuntimeError``,
``FileExistsError``), so ``except ValueError`` in existing code still catches it.
"""

from __future__ import annotations

__all__ = ["LofrUserError", "UsageError", "OutputExistsError"]


class LofrUserError(Exception):
    """Base of the errors caused by what the user gave lofr (module docstring)."""

    def user_message(self) -> str:
        """The message on one line (what the command line prints after ``error:``)."""
        return " ".join(str(self).split())


class UsageError(LofrUserError, ValueError):
    """A bad argument value."""


class OutputExistsError(LofrUserError, FileExistsError):
    """The output folder already holds something lofr would replace without being asked to."""
