import math

import pytest
import torch
import torch.nn as nn

from q0_reference.errors import Q0ConfigError
from q0_reference.perturb import PerturbationSchedule, perturb_weights, seeded_generator


def test_scale_falls_by_cosine_from_start_to_end():
    s = PerturbationSchedule()
    assert s.scale(0.0) == pytest.approx(0.25)
    assert s.scale(1.0) == pytest.approx(0.05)
    assert s.scale(0.5) == pytest.approx(0.15)
    # a quarter of the way: 0.05 + 0.2 * (1 + cos(pi/4)) / 2, worked by hand = 0.05 + 0.1 * 1.70711
    assert s.scale(0.25) == pytest.approx(0.220711, abs=1e-6)
    with pytest.raises(Q0ConfigError, match="progress"):
        s.scale(1.2)


@pytest.mark.parametrize("scale", [0.25, 0.05])
def test_noise_has_the_stated_scale_relative_to_each_tensor(scale):
    model = nn.Sequential(nn.Linear(512, 512, bias=False), nn.Linear(512, 256, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0.0, 0.02)
        model[1].weight.normal_(3.0, 1.5)  # large mean: the scale must follow the std, not the magnitude
    before = [p.detach().clone() for p in model.parameters()]
    perturb_weights(model, scale, seeded_generator(7))
    for old, new in zip(before, model.parameters()):
        delta = (new.detach() - old).double()
        n = delta.numel()
        expected_std = scale * old.double().std().item()
        # the sample std of n normals is within ~4.5 / sqrt(2n) relative of the truth with overwhelming probability
        assert delta.std().item() == pytest.approx(expected_std, rel=4.5 / math.sqrt(2 * n))
        assert abs(delta.mean().item()) < 4.5 * expected_std / math.sqrt(n)


def test_seeded_noise_is_reproducible_and_leaves_global_rng_alone():
    def perturbed(seed):
        torch.manual_seed(0)
        model = nn.Linear(16, 16)
        perturb_weights(model, 0.1, seeded_generator(seed))
        return model.weight.detach().clone(), torch.rand(1)

    (a, ra), (b, rb), (c, _) = perturbed(1), perturbed(1), perturbed(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(ra, rb)  # the global stream after perturbing is the same as without it
    torch.manual_seed(0)
    nn.Linear(16, 16)
    assert torch.equal(torch.rand(1), ra)


def test_zero_scale_is_a_no_op_and_negative_is_an_error():
    model = nn.Linear(4, 4)
    before = model.weight.detach().clone()
    perturb_weights(model, 0.0, seeded_generator(0))
    assert torch.equal(before, model.weight)
    with pytest.raises(Q0ConfigError):
        perturb_weights(model, -0.1, seeded_generator(0))


def test_perturbing_never_reads_from_the_device_and_draws_beside_the_weights(monkeypatch):
    """No host read per tensor (the std stays on the device), and the noise comes from a generator on the
    weights' device; the meta device has no generator, so its noise is drawn on the host and moved."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (reads.append(1), item(self))[1])
    perturb_weights(model, 0.1, seeded_generator(0, "cpu"))
    assert reads == []
    assert seeded_generator(0, "cpu").device.type == "cpu"
    assert seeded_generator(0, "meta").device.type == "cpu"
    with torch.device("meta"):
        on_meta = torch.nn.Linear(8, 8)
    perturb_weights(on_meta, 0.1, seeded_generator(0, "meta"))
    assert on_meta.weight.is_meta
