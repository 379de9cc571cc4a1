"""The gated dense layers of Tomczak & Welling 2018 (``--encoder gated-mlp``, ``--decoder gated-mlp``) and the MLP's
``activation`` option (tanh, relu), each against its formula written out; the networks' shapes, and a VampPrior VAE
built and trained with the gated layers."""

from __future__ import annotations

import torch
from pyro_vae.models.networks import GatedDense

from pyro_vae import TrainConfig, VAEConfig, build, load_data, train


def test_gated_dense_is_linear_times_sigmoid_gate():
    torch.manual_seed(0)
    layer = GatedDense(3, 2)
    x = torch.randn(5, 3, dtype=torch.float64)
    layer = layer.double()
    w, b, v, c = layer.h.weight, layer.h.bias, layer.g.weight, layer.g.bias
    by_hand = (x @ w.T + b) / (1 + torch.exp(-(x @ v.T + c)))  # (W x + b) * sigmoid(V x + c)
    assert torch.allclose(layer(x), by_hand, rtol=1e-12, atol=0)


def test_gated_networks_build_and_train_with_the_vamp_prior(tmp_path):
    config = VAEConfig(x_shape=(1, 8, 8), z_dim=3, hidden=(12, 7), encoder="gated-mlp", decoder="gated-mlp")
    model, guide = build(config)
    assert guide.encoder.out_features == 7 and len(guide.encoder.net) == 2  # two gated layers, no output layer
    assert model.decoder(torch.zeros(4, 3)).shape == (4, 1, 8, 8)
    cfg = TrainConfig.for_data(
        load_data("digits"), z_dim=2, hidden=(16, 16), encoder="gated-mlp", decoder="gated-mlp", prior="vamp",
        options={"prior": {"components": 10}}, epochs=3, batch_size=256, threads=1, lr=1e-2,
    )  # fmt: skip
    result = train(cfg, tmp_path / "run", progress=False, figures=False)
    elbos = [r["test_elbo"] for r in result.metrics]
    assert elbos[-1] > elbos[0]  # it learns: the test ELBO rises over 3 epochs


def test_mlp_activation_option_tanh_and_relu_by_hand():
    torch.manual_seed(1)
    config = VAEConfig(
        x_dim=4, z_dim=2, hidden=(3,), options={"decoder": {"activation": "tanh"}, "encoder": {"activation": "relu"}}
    )
    model, guide = build(config)
    z, x = torch.randn(5, 2), torch.rand(5, 4)
    first, last = model.decoder.net[0], model.decoder.net[2]
    by_hand = torch.tanh(z @ first.weight.T + first.bias) @ last.weight.T + last.bias  # Burda et al.'s tanh units
    assert torch.allclose(model.decoder(z), by_hand, rtol=1e-6, atol=1e-7)
    layer = guide.encoder.net[0]
    assert torch.equal(guide.encoder(x), torch.clamp(x @ layer.weight.T + layer.bias, min=0))  # relu
