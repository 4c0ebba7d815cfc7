"""Every registered workload at its tiny size, on CPU: forward shapes, a backward that reaches
every parameter, a few optimizer steps that lower the loss on a fixed batch, and no NaN."""

import pytest
import torch

from nndoctor.zoo import create_loss, create_model, sample_batch
from nndoctor.zoo.colorization import ab_bins

Q = len(ab_bins())

TINY = [
    "rotnet", "jigsaw", "relative-patch", "exemplar", "denoising-ae", "context-ae", "colorization",
    "split-brain", "counting", "multitask", "deepcluster", "yolov3-tiny-test", "efficientdet-tiny-test",
]  # fmt: skip


def _shapes(x):
    if torch.is_tensor(x):
        return tuple(x.shape)
    if isinstance(x, dict):
        return {k: _shapes(v) for k, v in x.items()}
    return [_shapes(v) for v in x]


# batch_size = 4 images (RotNet shows each in 4 rotations; multitask's exemplar has 2 views each)
EXPECTED_SHAPES = {
    "rotnet": ((16, 3, 32, 32), (16, 4)),
    "jigsaw": ((4, 9, 3, 32, 32), (4, 24)),
    "relative-patch": ((4, 2, 3, 32, 32), (4, 8)),
    "exemplar": ((4, 3, 32, 32), (4, 64)),
    "denoising-ae": ((4, 3, 32, 32), (4, 3, 32, 32)),
    "context-ae": ((4, 3, 32, 32), (4, 3, 16, 16)),
    "colorization": ((4, 1, 32, 32), (4, Q, 8, 8)),
    "split-brain": ((4, 3, 32, 32), [(4, Q, 3, 3), (4, 20, 3, 3)]),
    "counting": ((4, 6, 3, 32, 32), (4, 6, 64)),
    "multitask": (
        {"relative_position": (4, 2, 3, 16, 16), "colorization": (4, 3, 64, 64), "exemplar": (8, 3, 64, 64)},
        {"relative_position": (4, 8), "colorization": (4, Q, 16, 16), "exemplar": (8, 32)},
    ),
    "deepcluster": ((4, 3, 32, 32), (4, 10)),
    "yolov3-tiny-test": ((4, 3, 96, 96), [(4, 24, 3, 3), (4, 24, 6, 6), (4, 24, 12, 12)]),
    "efficientdet-tiny-test": (
        (4, 3, 128, 128),
        [[(4, 27, 16, 16), (4, 27, 8, 8), (4, 27, 4, 4), (4, 27, 2, 2), (4, 27, 1, 1)],
         [(4, 36, 16, 16), (4, 36, 8, 8), (4, 36, 4, 4), (4, 36, 2, 2), (4, 36, 1, 1)]],
    ),
}  # fmt: skip


def test_every_tiny_workload_has_an_expected_shape_entry():
    assert set(EXPECTED_SHAPES) == set(TINY)


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_shapes(name):
    torch.manual_seed(0)
    model = create_model(name, size="tiny")
    inputs, _ = sample_batch(name, model, batch_size=4)
    with torch.no_grad():
        outputs = model.eval()(inputs)
    assert (_shapes(inputs), _shapes(outputs)) == EXPECTED_SHAPES[name]


@pytest.mark.parametrize("name", TINY)
def test_tiny_backward_reaches_every_parameter_and_loss_decreases(name):
    torch.manual_seed(0)
    model = create_model(name, size="tiny")
    loss_fn = create_loss(name, model=model)
    inputs, targets = sample_batch(name, model, batch_size=4)
    model.train()

    loss = loss_fn(model(inputs), targets)
    assert loss.dim() == 0 and torch.isfinite(loss), f"initial loss {loss}"
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    all_zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert len(all_zero) <= len(no_grad) + sum(1 for _ in model.parameters()) // 4, f"mostly zero gradients: {all_zero}"

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [loss.item()]
    optimizer.step()
    for _ in range(7):
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert min(losses[-3:]) < 0.97 * losses[0], f"loss did not decrease on a fixed batch: {losses}"
