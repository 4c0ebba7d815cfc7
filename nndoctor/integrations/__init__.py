"""Callbacks for the trainers users already use.

- ``nndoctor.integrations.lightning.DoctorCallback``: Lightning 2.x (``lightning.pytorch``).
- ``nndoctor.integrations.transformers.DoctorCallback``: Hugging Face ``transformers.Trainer``.

Each module imports its framework when imported itself; ``import nndoctor`` never does.
"""
