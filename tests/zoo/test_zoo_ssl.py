"""Self-supervised pretext tasks: the batch recipes and losses, checked by hand."""

import math

import pytest
import torch

from nndoctor.zoo import colorization, context_ae, counting, create_model, deepcluster, denoising_ae, exemplar, jigsaw, multitask, relative_patch, rotnet
from nndoctor.zoo.linear_eval import LinearProbe, linear_eval_optimizer


# ---- rotation


def test_rotate_batch_stacks_rotations_in_label_order():
    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    inputs, labels = rotnet.rotate_batch(images)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(inputs[:2], images)
    # label 1 = 90° counter-clockwise: the top row becomes the left column, read bottom-up
    assert inputs[2, 0, :, 0].tolist() == images[0, 0, 0, :].flip(0).tolist()
    assert torch.equal(inputs[4], images[0].flip(-1).flip(-2))  # 180°
    assert torch.equal(torch.rot90(inputs[6], 1, dims=(-2, -1)), images[0])  # 270° + 90° = identity


def test_rotate_batch_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        rotnet.rotate_batch(torch.zeros(1, 3, 32, 48))


# ---- jigsaw


def _hamming(perms):
    return (perms[:, None, :] != perms[None, :, :]).sum(-1)


def test_jigsaw_permutations_are_distinct_and_far_apart():
    perms = jigsaw.select_permutations(100)
    assert perms.shape == (100, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    d = _hamming(perms)
    off = d[~torch.eye(100, dtype=torch.bool)]
    assert off.min() >= 2  # all distinct
    # greedy max-average selection: mean pairwise distance ≈ 0.898·9 (random pairs: 8.0)
    assert off.float().mean().item() > 0.88 * 9
    assert torch.equal(perms, jigsaw.select_permutations(100))  # deterministic for a seed


def test_jigsaw_minimum_criterion_raises_the_closest_pair_distance():
    d = _hamming(jigsaw.select_permutations(24, criterion="minimum"))
    assert d[~torch.eye(24, dtype=torch.bool)].min() >= 6


def test_make_puzzles_places_source_tiles_by_permutation():
    # 3×3 cells of exactly the tile size: no gap, so every tile is a known cell
    # pixel value = index of its cell (reading order)
    images = torch.arange(9, dtype=torch.float32).reshape(3, 3).repeat_interleave(4, 0).repeat_interleave(4, 1)[None, None]
    perms = jigsaw.select_permutations(24)
    tiles, labels = jigsaw.make_puzzles(images.expand(5, 3, 12, 12).contiguous(), perms, 4, normalize_tiles=False)
    assert tiles.shape == (5, 9, 3, 4, 4)
    for i in range(5):
        placed = tiles[i, :, 0, 0, 0].long().tolist()
        assert placed == perms[labels[i]].tolist()


def test_make_puzzles_standardises_each_tile():
    tiles, _ = jigsaw.make_puzzles(torch.rand(2, 3, 48, 48), jigsaw.select_permutations(10), 12)
    assert torch.allclose(tiles.mean(dim=(2, 3, 4)), torch.zeros(2, 9), atol=1e-5)
    assert torch.allclose(tiles.std(dim=(2, 3, 4)), torch.ones(2, 9), atol=1e-4)


def test_make_puzzles_rejects_too_small_images():
    with pytest.raises(ValueError, match="smaller than tile_size"):
        jigsaw.make_puzzles(torch.rand(1, 3, 30, 30), jigsaw.select_permutations(4), 12)


# ---- relative patch location


def test_patch_pairs_take_centre_and_labelled_neighbour():
    p, gap = 4, 2
    side = relative_patch.grid_extent(p, gap, 0)  # 16
    # value = 10·row + col of the 3×3 cell the pixel belongs to (gaps are −1)
    image = torch.full((side, side), -1.0)
    for r in range(3):
        for c in range(3):
            image[r * (p + gap) : r * (p + gap) + p, c * (p + gap) : c * (p + gap) + p] = 10 * r + c
    images = image.expand(16, 3, side, side).contiguous()
    pairs, labels = relative_patch.sample_patch_pairs(images, p, gap, 0, standardize=False, generator=torch.Generator().manual_seed(0))
    assert pairs.shape == (16, 2, 3, p, p)
    assert (pairs[:, 0] == 11).all()  # centre cell (1, 1)
    for i in range(16):
        r, c = relative_patch.NEIGHBOUR_CELLS[labels[i]]
        assert (pairs[i, 1] == 10 * r + c).all()
    assert labels.min() >= 0 and labels.max() <= 7


def test_patch_pairs_need_room_for_the_jittered_grid():
    with pytest.raises(ValueError, match="need at least 116x116"):
        relative_patch.sample_patch_pairs(torch.rand(1, 3, 100, 100), 32, 8, 2)


# ---- exemplar


def test_surrogate_classes_are_seed_views_with_varying_transforms():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 80, 80)
    patches, labels = exemplar.make_surrogate_classes(images, num_classes=5, views=3, patch_size=16, generator=g)
    assert patches.shape == (15, 3, 16, 16) and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert patches.min() >= 0 and patches.max() <= 1
    assert not torch.allclose(patches[0], patches[1])  # two views of one seed differ


def test_exemplar_seeds_come_from_textured_regions():
    # left half flat, right half noisy: seeds should (almost) all touch the right half
    image = torch.zeros(1, 3, 64, 128)
    image[..., 64:] = torch.rand(1, 3, 64, 64)
    window = exemplar._gradient_energy(image)
    assert window[:, :, :50].sum() == 0 and window[:, :, 70:].sum() > 0


# ---- autoencoders


def test_denoising_corruption_masks_about_the_requested_fraction():
    x = torch.ones(4, 3, 32, 32)
    noisy, clean = denoising_ae.make_batch(x, mask_fraction=0.3, generator=torch.Generator().manual_seed(0))
    assert (clean == 1).all()  # scaled to [-1, 1]
    assert (noisy == 0).float().mean().item() == pytest.approx(0.3, abs=0.02)


def test_context_mask_fills_the_hole_and_returns_the_true_centre():
    x = torch.rand(2, 3, 32, 32)
    masked, centre = context_ae.make_batch(x, overlap=1)
    assert torch.equal(centre, (x * 2 - 1)[..., 8:24, 8:24])
    assert torch.allclose(masked[:, :, 9:23, 9:23], torch.tensor(context_ae.HOLE_FILL)[:, None, None].expand(2, 3, 14, 14))
    assert torch.equal(masked[..., :8, :], (x * 2 - 1)[..., :8, :])  # context untouched


def test_context_loss_weights_the_overlap_border():
    loss = context_ae.ContextLoss(overlap=1, overlap_weight=10.0)
    target = torch.zeros(1, 1, 4, 4)
    inner = torch.zeros(1, 1, 4, 4)
    inner[..., 1:3, 1:3] = 1.0
    border = torch.zeros(1, 1, 4, 4)
    border[..., 0, 0] = 1.0
    assert loss(inner, target).item() == pytest.approx(4 / 16)
    assert loss(border, target).item() == pytest.approx(10 / 16)


def test_lab_conversion_reference_colours():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    lab = colorization.rgb_to_lab(rgb)[0, :, 0].T
    assert lab[0].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.05)
    assert lab[1].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=0.05)
    assert lab[2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.1)  # sRGB red, D65


def test_ab_bins_are_an_in_gamut_grid_of_size_10():
    bins = colorization.ab_bins()
    assert 250 <= len(bins) <= 313  # the paper's 313 also counts bins only touched at the edge
    assert [0.0, 0.0] in bins.tolist()
    assert (bins.remainder(10) == 0).all()
    assert bins.abs().max() <= 130


def test_soft_encoding_puts_gaussian_mass_on_the_5_nearest_bins():
    bins = colorization.ab_bins()
    ab = torch.tensor([0.0, 0.0]).reshape(1, 2, 1, 1)
    z = colorization.soft_encode_ab(ab, bins)[0, :, 0, 0]
    assert z.sum().item() == pytest.approx(1.0)
    assert (z > 0).sum() == 5
    assert bins[z.argmax()].tolist() == [0.0, 0.0]
    # the 4 neighbours at distance 10 get exp(−100 / 50) of the centre's weight
    ratio = z.topk(2).values
    assert (ratio[1] / ratio[0]).item() == pytest.approx(math.exp(-100 / (2 * 25)), rel=1e-4)


def test_rebalancing_weights_favour_rare_bins_and_average_to_one():
    prior = torch.tensor([0.7, 0.2, 0.1])
    w = colorization.rebalance_weights(prior, lam=0.5)
    assert w[2] > w[1] > w[0]
    assert (w * prior).sum().item() == pytest.approx(1.0)


def test_colorization_loss_masks_gray_images():
    loss = colorization.ColorizationLoss()
    logits = torch.randn(2, len(colorization.ab_bins()), 2, 2, requires_grad=True)
    gray = torch.zeros(2, 2, 8, 8)
    assert loss(logits, gray).item() == 0.0
    colourful = gray.clone()
    colourful[0, 0] = 40.0
    assert loss(logits, colourful).item() > 0


# ---- counting


def test_counting_views_are_down_sampled_image_tiles_and_another_image():
    images = torch.rand(3, 3, 8, 8)
    views = counting.counting_views(images, mode="area")
    assert views.shape == (3, 6, 3, 4, 4)
    assert torch.allclose(views[:, 0], torch.nn.functional.avg_pool2d(images, 2))
    assert torch.equal(views[:, 1], images[..., :4, :4]) and torch.equal(views[:, 2], images[..., :4, 4:])
    assert torch.equal(views[:, 3], images[..., 4:, :4]) and torch.equal(views[:, 4], images[..., 4:, 4:])
    assert torch.equal(views[:, 5], views[:, 0].roll(1, dims=0))


def test_counting_loss_by_hand():
    loss = counting.CountingLoss(margin=10.0)
    tiles = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # sum (2, 2)
    whole = torch.tensor([2.0, 2.0])
    far = torch.tensor([5.0, 2.0])  # ‖far − Σ‖² = 9 < 10 → hinge 1
    counts = torch.cat([whole[None], tiles, far[None]])[None]
    assert loss(counts).item() == pytest.approx(0 + 1.0)
    collapsed = torch.zeros(1, 6, 2)  # the trivial φ ≡ 0 pays the whole margin
    assert loss(collapsed).item() == pytest.approx(10.0)


def test_counting_needs_two_images():
    with pytest.raises(ValueError, match="at least 2 images"):
        counting.counting_views(torch.rand(1, 3, 8, 8))


# ---- multi-task


def test_batch_hard_triplet_loss_by_hand():
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert multitask.batch_hard_triplet_loss(separated, labels, 0.5).item() == 0.0
    collapsed = torch.ones(4, 2) / math.sqrt(2)
    assert multitask.batch_hard_triplet_loss(collapsed, labels, 0.5).item() == pytest.approx(0.5)


def test_multitask_exemplar_embeddings_are_normalised_per_sample():
    model = create_model("multitask", size="tiny").eval()
    out = model({"exemplar": torch.rand(6, 3, 32, 32)})
    assert torch.allclose(out["exemplar"].norm(dim=1), torch.ones(6), atol=1e-5)
    with pytest.raises(ValueError, match="unknown task"):
        model({"motion": torch.rand(1, 3, 32, 32)})


# ---- DeepCluster


def test_kmeans_reseeds_an_empty_cluster():
    g = torch.Generator().manual_seed(0)
    blobs = torch.cat([torch.randn(20, 2, generator=g) * 0.1 + c for c in (torch.tensor([0.0, 0.0]), torch.tensor([5.0, 0.0]), torch.tensor([0.0, 5.0]))])
    init = torch.tensor([[0.0, 0.0], [5.0, 0.0], [100.0, 100.0]])  # the third starts far away: empty
    labels, centroids, reseeded = deepcluster.kmeans(blobs, 3, generator=g, init=init)
    assert reseeded >= 1
    assert torch.bincount(labels, minlength=3).min() > 0
    # and it finds the three blobs
    assert sorted(torch.bincount(labels, minlength=3).tolist()) == [20, 20, 20]


def test_pca_whitening_gives_unit_vectors_of_the_requested_dimension():
    x = torch.randn(50, 12)
    y = deepcluster.pca_whiten(x, 4)
    assert y.shape == (50, 4)
    assert torch.allclose(y.norm(dim=1), torch.ones(50), atol=1e-5)


def test_cluster_features_restores_mode_and_resets_the_top_layer():
    torch.manual_seed(0)
    model = create_model("deepcluster", size="tiny").train()
    before = model.top_layer.weight.detach().clone()
    labels = deepcluster.cluster_features(model, torch.rand(40, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert model.training
    assert labels.shape == (40,) and labels.max() < 10
    assert not torch.equal(before, model.top_layer.weight)
    assert model.top_layer.weight.std().item() == pytest.approx(0.01, rel=0.2)


def test_uniform_cluster_sampling_balances_clusters():
    labels = torch.tensor([0] * 90 + [1] * 10)
    picks = deepcluster.uniform_cluster_sample(labels, 2000, generator=torch.Generator().manual_seed(0))
    assert (labels[picks] == 1).float().mean().item() == pytest.approx(0.5, abs=0.05)


# ---- linear evaluation


def test_linear_probe_keeps_the_trunk_frozen_including_batchnorm_statistics():
    torch.manual_seed(0)
    trunk = create_model("rotnet", size="tiny").trunk
    probe = LinearProbe(trunk, "conv2", num_classes=10, target_dims=256)
    state = {k: v.clone() for k, v in trunk.state_dict().items()}
    opt, sched = linear_eval_optimizer(probe, lr=0.1)
    probe.train()
    assert not trunk.training
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(torch.rand(8, 3, 32, 32)), torch.randint(10, (8,))).backward()
        opt.step()
    assert all(torch.equal(state[k], v) for k, v in trunk.state_dict().items())  # weights and BN buffers
    assert probe.classifier.weight.grad is not None
    assert sched.milestones == {10: 1, 20: 1}


def test_linear_probe_rejects_an_unknown_layer():
    with pytest.raises(ValueError, match="conv1"):
        LinearProbe(create_model("rotnet", size="tiny").trunk, "fc7", 10)
