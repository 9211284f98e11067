"""User-facing errors of the deployment code: one line that names the file and says what to do.

The ``anomalib-sir`` console script prints a :class:`DeployError` as ``anomalib-sir <command>: error:
<message>`` without a traceback (``--verbose`` adds it) and exits with status 2.

Example:
    >>> str(DeployError("scans/x.png: not an image", fix="pass PNG/JPEG/DICOM/NIfTI files"))
    'scans/x.png: not an image; pass PNG/JPEG/DICOM/NIfTI files'

"""

from __future__ import annotations


class DeployError(Exception):
    """A problem with what the user passed (a file, a folder, a checkpoint), with the fix.

    Args:
        message: what is wrong, naming the file.
        fix: what to do about it (appended after ``"; "``).

    """

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message}; {fix}" if fix else message)


class CheckpointError(DeployError):
    """A checkpoint that is missing, unreadable, of another model, or from an incompatible version."""
