"""The two kinds of error the command line reports in one line instead of a traceback.

A `UserError` means an input cannot be used: a config key, a file, a record, a checkpoint. Its message names
the file (and the key, row or field) and says what to do; the CLI prints it and exits with 2. A `RunFailure`
means the run stopped for a reason outside its inputs (a full disk, lost cluster tasks); exit code 1. Each
package's own errors derive from one of them and keep their builtin base (ValueError, FileNotFoundError,
RuntimeError) so callers that catch those still do.
"""


class UserError(Exception):
    """An input a user gave that cannot be used; the message is the whole report."""


class MissingInput(UserError, FileNotFoundError):
    """A file or directory a user named that is not there (or not what was asked for: no shards, no report)."""


class RunFailure(RuntimeError):
    """The run stopped for a reason outside its inputs; the message says what is kept and what to do."""
