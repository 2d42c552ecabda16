"""The numpy diffusion pieces against the torch/diffusers code they reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from depthrt.diffusion import base, loops
from depthrt.diffusion.marigold import ensemble_depth, ensemble_normals
from depthrt.errors import BundleError, InputError

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

MARIGOLD_DDIM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                     prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
                     timestep_spacing="trailing", rescale_betas_zero_snr=True)
MARIGOLD_LCM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    original_inference_steps=50, prediction_type="v_prediction", set_alpha_to_one=False,
                    steps_offset=1, timestep_scaling=10.0, timestep_spacing="leading")


def _ours(sched):
    from depthrt_export.diffusion.common import scheduler_entry

    return loops.make_scheduler(scheduler_entry(sched))


@pytest.mark.parametrize("overrides", [
    {},
    {"timestep_spacing": "leading", "rescale_betas_zero_snr": False},
    {"timestep_spacing": "linspace", "prediction_type": "epsilon", "rescale_betas_zero_snr": False},
    {"prediction_type": "sample", "clip_sample": True},
])
def test_ddim_matches_diffusers(overrides):
    config = {**MARIGOLD_DDIM, **overrides}
    ref = diffusers.DDIMScheduler(**config)
    ours = _ours(ref)
    for n in (1, 2, 3, 4, 7, 10, 50):
        ref.set_timesteps(n)
        assert ours.timesteps(n).tolist() == ref.timesteps.tolist(), n
    g = torch.Generator().manual_seed(0)
    for n in (1, 4):
        ref.set_timesteps(n)
        ts = ours.timesteps(n)
        x_ref = torch.randn(2, 4, 5, 7, generator=g)
        x = x_ref.numpy().copy()
        for i, t in enumerate(ref.timesteps):
            out = torch.randn(2, 4, 5, 7, generator=g)
            x_ref = ref.step(out, t, x_ref).prev_sample
            x = ours.step(out.numpy(), x, ts, i)
        np.testing.assert_allclose(x, x_ref.numpy(), rtol=1e-5, atol=1e-5)


def test_lcm_matches_diffusers():
    ref = diffusers.LCMScheduler(**MARIGOLD_LCM)
    ours = _ours(ref)
    for n in (1, 2, 4, 8, 50):
        ref.set_timesteps(n)
        assert ours.timesteps(n).tolist() == ref.timesteps.tolist(), n
    ref.set_timesteps(1)
    x = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    out = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(2))
    expected = ref.step(out, ref.timesteps[0], x).prev_sample.numpy()
    np.testing.assert_allclose(ours.step(out.numpy(), x.numpy(), ours.timesteps(1), 0), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="at most|more than"):
        ours.timesteps(51)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_steps_below_one_or_not_whole_are_refused(bad):
    sched = _ours(diffusers.DDIMScheduler(**MARIGOLD_DDIM))
    with pytest.raises(InputError, match="num_inference_steps"):
        sched.timesteps(bad)


def test_unknown_scheduler_is_a_bundle_error():
    with pytest.raises(BundleError, match="not one depthrt runs"):
        loops.make_scheduler({"class": "EulerAncestralDiscreteScheduler"})


@pytest.mark.parametrize("size", [(37, 80), (128, 83), (400, 300), (50, 50)])
def test_antialiased_resize_matches_torch(size):
    x = torch.rand(1, 3, 97, 151, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = torch.nn.functional.interpolate(x, size, mode="bilinear", antialias=True).numpy()
    np.testing.assert_allclose(base.resize_antialias(x.numpy(), size, "bilinear"), ref, atol=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "nearest-exact", "nearest"])
def test_output_resize_matches_torch(mode):
    x = torch.rand(2, 3, 23, 31, generator=torch.Generator().manual_seed(1))
    for size in ((50, 77), (11, 9)):
        ref = torch.nn.functional.interpolate(x, size, mode=mode).numpy()
        np.testing.assert_allclose(base.resize(x.numpy(), size, mode), ref, atol=2e-6)


def test_pad_and_unpad_are_replicate_bottom_right():
    x = np.arange(2 * 3 * 5 * 11, dtype=np.float32).reshape(2, 3, 5, 11)
    padded, padding = base.pad_to_multiple(x, 8)
    ref = torch.nn.functional.pad(torch.from_numpy(x), (0, 5, 0, 3), mode="replicate").numpy()
    assert padding == (3, 5)
    np.testing.assert_array_equal(padded, ref)
    np.testing.assert_array_equal(base.unpad(padded, padding), x)


def test_normals_ensemble_is_diffusers_closest():
    g = torch.Generator().manual_seed(3)
    n = torch.nn.functional.normalize(torch.randn(5, 3, 9, 13, generator=g), dim=1)
    ref, _ = diffusers.MarigoldNormalsPipeline.ensemble_normals(n.clone(), output_uncertainty=False)
    np.testing.assert_allclose(ensemble_normals(n.numpy()), ref[0].numpy(), atol=1e-6)


def test_depth_ensemble_undoes_scale_and_shift():
    rng = np.random.default_rng(0)
    truth = rng.random((40, 60)).astype(np.float32)
    members = np.stack([truth * s + t + rng.normal(0, 0.01, truth.shape) for s, t in
                        ((1.0, 0.0), (2.0, 0.5), (0.5, -0.2), (3.0, 1.0), (1.5, 0.1))]).astype(np.float32)
    merged = ensemble_depth(members)
    assert merged.min() == pytest.approx(0.0) and merged.max() == pytest.approx(1.0)
    expected = (truth - truth.min()) / (truth.max() - truth.min())
    assert np.abs(merged - expected).mean() < 0.01
