"""The experiments behind ``Doctor.checkup``: probes that measure copies of the model.

One module per experiment; each ``measure(ctx, **settings)`` takes the
:class:`~nndoctor.probes.context.ProbeContext` and plain settings (numbers derived from
the check's thresholds by the orchestrator, ``nndoctor._experiments``) and returns a
typed record (``nndoctor._probe_records``). Probes never import a check, never decide a
verdict and never write files; :mod:`~nndoctor.probes.isolation` guarantees they leave
no trace on the user's model, optimizer and random streams.

==================  ==================================  ====================
module              measures                            record
==================  ==================================  ====================
``init_loss``       loss at initialisation              ``InitLoss``
``overfit``         fitting a tiny fixed batch          ``OverfitRun``
``random_input``    real vs noise vs zero inputs        ``RandomInputRun``
``lr_sweep``        LR x0.1/x1/x10, LR range test       ``LrSweepRun``, ``LrRangeTest``
``gradcheck``       analytic vs numerical gradients     ``GradcheckRun``
``interventions``   a root cause's fix, before/after    ``InterventionTrial``
``pairing``         held-out real vs permuted labels    ``PairingRun``
==================  ==================================  ====================
"""

from . import gradcheck, init_loss, interventions, lr_sweep, overfit, pairing, random_input
from .context import ProbeContext
from .isolation import ProbeSkip, isolated

__all__ = ["ProbeContext", "ProbeSkip", "isolated", "init_loss", "overfit", "random_input", "lr_sweep", "gradcheck",
           "interventions", "pairing"]
