"""nndoctor: tells a PyTorch user why their network is not training, and how to fix it.

    from nndoctor import Doctor
    doctor = Doctor(model, optimizer=opt, loss_fn=criterion)
    with doctor.watch():
        ...  # your training loop, unchanged
    doctor.report().print()
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from ._report import Finding, Report, Severity  # noqa: E402  (pure Python, cheap)

__all__ = ["Doctor", "Finding", "Report", "Severity", "__version__"]


def __getattr__(name: str) -> Any:
    # Doctor pulls in torch; importing it lazily keeps `nndoctor.zoo`, the catalogue and
    # `nndoctor explain` usable without paying torch's import time.
    if name == "Doctor":
        from ._doctor import Doctor

        return Doctor
    raise AttributeError(f"module 'nndoctor' has no attribute {name!r}")
