"""The nndoctor pytest plugin (registered through the ``pytest11`` entry point).

    def test_net_trains(nndoctor_assert_trains):
        nndoctor_assert_trains(Net(), (x, y))

    @pytest.mark.nndoctor(fail_on="warning", ignore=["lr-sweep"])
    def test_strict(nndoctor_assert_trains):
        nndoctor_assert_trains(Net(), (x, y))   # the marker's options are the defaults

The fixture is :func:`nndoctor.testing.assert_trains`, with defaults taken from the
test's ``nndoctor`` marker. Importing this module imports neither torch nor nndoctor's
engine: a test session that does not use the fixture pays nothing.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "nndoctor(fail_on='error', select=None, ignore=None, **options): defaults for the "
        "nndoctor_assert_trains fixture (nndoctor.testing.assert_trains)",
    )


@pytest.fixture
def nndoctor_assert_trains(request: Any) -> Callable[..., Any]:
    """``assert_trains(model, batch, loss_fn=None, optimizer=None, **kw)``: raises
    AssertionError carrying nndoctor's report when the model does not train. Defaults
    come from ``@pytest.mark.nndoctor(...)`` on the test, keyword arguments win."""
    from nndoctor.testing import assert_trains

    marker = request.node.get_closest_marker("nndoctor")
    defaults: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise pytest.UsageError(
            "@pytest.mark.nndoctor takes keyword arguments only, e.g. "
            "@pytest.mark.nndoctor(fail_on='warning', ignore=['lr-sweep'])"
        )

    def _assert(model: Any, batch: Any, loss_fn: Any = None, optimizer: Any = None, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        return assert_trains(model, batch, loss_fn, optimizer, **{**defaults, **kwargs})

    return _assert
