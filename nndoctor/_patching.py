"""One mechanism for the few attributes nndoctor wraps process-wide
(``torch.autograd.backward``, ``GradScaler.scale/update``,
``DistributedSampler.__iter__/set_epoch``).

A ``SharedPatch`` installs its wrappers when the first listener arrives and puts the
originals back when the last one leaves, so several Doctors (or trackers) coexist and
nothing outlives them. Wrappers read ``patch.listeners`` at call time.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["SharedPatch"]

# install(patch) -> [(owner, attribute name, wrapper)], or None when there is nothing to
# patch (e.g. a torch without that class).
Installer = Callable[["SharedPatch"], "list[tuple[Any, str, Callable[..., Any]]] | None"]


class SharedPatch:
    def __init__(self, install: Installer) -> None:
        self._install = install
        self._lock = threading.Lock()
        self._listeners: list[Any] = []
        self._originals: list[tuple[Any, str, Any]] = []

    @property
    def listeners(self) -> list[Any]:
        """A snapshot: a listener added or removed during a call does not disturb it."""
        return list(self._listeners)

    def add(self, listener: Any) -> None:
        with self._lock:
            if not self._listeners:
                wrappers = self._install(self)
                if wrappers is None:
                    return
                for owner, name, wrapper in wrappers:
                    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
                    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
                    wrapper.__doc__ = getattr(original, "__doc__", None)
                    self._originals.append((owner, name, original))
                    setattr(owner, name, wrapper)
            self._listeners.append(listener)

    def remove(self, listener: Any) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
            if not self._listeners:
                for owner, name, original in reversed(self._originals):
                    setattr(owner, name, original)
                self._originals = []
