"""Spatial transformer: identity start, exact crops for known transforms, gradients into the localisation net."""
from __future__ import annotations

import torch

import vitlab
from vitlab.models.stn import SpatialTransformer


def test_starts_at_the_identity_transform():
    st = SpatialTransformer(in_chans=3, out_size=32, num_transformers=2)
    x = torch.randn(2, 3, 32, 32)
    crops, theta = st(x)
    assert crops.shape == (2, 2, 3, 32, 32)
    torch.testing.assert_close(theta, torch.eye(2, 3).expand(2, 2, 2, 3))
    torch.testing.assert_close(crops[:, 0], x, rtol=1e-5, atol=1e-5)     # sampling at the pixel centres
    torch.testing.assert_close(crops[:, 1], x, rtol=1e-5, atol=1e-5)


def test_a_zoom_by_two_samples_the_central_crop():
    """theta = diag(0.5, 0.5): output pixel i of 16 samples input pixel i + 8 of 32 exactly (align_corners=False)."""
    st = SpatialTransformer(out_size=16)
    with torch.no_grad():
        st.fc_theta.bias.copy_(torch.tensor([0.5, 0, 0, 0, 0.5, 0]))
    x = torch.randn(2, 3, 32, 32)
    crops, _ = st(x)
    torch.testing.assert_close(crops[:, 0], x[:, :, 8:24, 8:24], rtol=1e-5, atol=1e-5)


def test_a_translation_shifts_the_image():
    st = SpatialTransformer(out_size=32)
    with torch.no_grad():   # x_s = x_t + 2/32*2: sample 2 pixels to the right
        st.fc_theta.bias.copy_(torch.tensor([1, 0, 4 / 32, 0, 1, 0]))
    x = torch.randn(1, 3, 32, 32)
    crops, _ = st(x)
    torch.testing.assert_close(crops[0, 0, :, :, :30], x[0, :, :, 2:], rtol=1e-5, atol=1e-5)
    # outside the input the border column repeats
    torch.testing.assert_close(crops[0, 0, :, :, 31], x[0, :, :, 31], rtol=1e-5, atol=1e-5)


def test_classifier_learns_and_the_localisation_net_gets_gradients(fit_batch):
    torch.manual_seed(0)
    model = vitlab.create_model("stn2_cnn_48", num_classes=4, img_size=24, out_size=16, cls_channels=(8, 16),
                                loc_channels=(8, 8), loc_hidden=16)
    x, y = torch.randn(8, 3, 24, 24), torch.arange(8) % 4
    assert model.forward_features(x).shape == (8, 2 * 16)
    losses, grads = fit_batch(model, x, y)
    assert set(grads) == {n for n, _ in model.named_parameters()}
    assert grads["stn.fc_theta.weight"].abs().sum() > 0          # the sampler is differentiable in theta
    assert losses[-1] < 0.7 * losses[0]
    _, theta = model.transform(x)
    assert not torch.allclose(theta, torch.eye(2, 3).expand_as(theta))      # the transform moved off the identity


def test_baseline_without_st_is_the_same_classifier_on_the_identity_crop():
    model = vitlab.create_model("stn_cnn_48", use_stn=False, out_size=48).eval()
    assert not hasattr(model.stn, "fc_theta")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), model.branches[0](x), rtol=1e-5, atol=1e-5)


def test_study_distortions_are_similarity_transforms_within_their_ranges():
    from vitlab.studies.stn import distort, random_affine

    theta = random_affine(500, torch.Generator().manual_seed(0), max_rotation=60.0, scale=(0.7, 1.2), max_shift=0.3)
    A, b = theta[:, :, :2], theta[:, :, 2]
    inv_scale = A[:, 0].norm(dim=1)                                             # 1 / s
    torch.testing.assert_close(A @ A.transpose(1, 2), inv_scale[:, None, None] ** 2 * torch.eye(2).expand(500, 2, 2))
    assert inv_scale.min() >= 1 / 1.2 - 1e-5 and inv_scale.max() <= 1 / 0.7 + 1e-5
    angle = torch.atan2(A[:, 0, 1], A[:, 0, 0]).rad2deg()                       # A = R(-a) / s
    assert angle.abs().max() <= 60.0 + 1e-3 and angle.abs().max() > 50.0
    shift = -torch.linalg.solve(A, b)                                            # t, the object's displacement
    assert shift.abs().max() <= 0.3 + 1e-5
    # identity: a 32 px image shrunk to half a 48 px canvas lands in the centre, the border stays black
    image = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    canvas = distort(image, 48, torch.eye(2, 3).unsqueeze(0), 0.5)
    assert canvas.shape == (1, 3, 48, 48)
    assert torch.all(canvas[..., 13:35, 13:35] > 0.99) and torch.all(canvas[..., :11, :] == 0)
