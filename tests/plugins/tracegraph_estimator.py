"""A plugin registering Pyro's TraceGraph_ELBO as the estimator "tracegraph": score-function gradients with
Rao-Blackwellisation and a decaying-average baseline, so it trains discrete guides (bernoulli, categorical)."""

from pyro.infer import TraceGraph_ELBO

from pyro_vae import register_estimator

register_estimator(
    "tracegraph",
    TraceGraph_ELBO,
    value="ELBO (one sample per particle)",
    gradient="reparameterised where it can be, score function with baselines elsewhere (Pyro's TraceGraph_ELBO)",
)
