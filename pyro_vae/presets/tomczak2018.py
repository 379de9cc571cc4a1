"""Tomczak & Welling 2018, "VAE with a VampPrior" (AISTATS), Sec. 4, one-layer VAE with the VampPrior."""

from pyro_vae.presets import Preset

PRESET = Preset(
    name="tomczak2018",
    summary="VAE + VampPrior (K = 500) on dynamically binarised MNIST (Tomczak & Welling 2018)",
    source=(
        "Tomczak & Welling 2018, 'VAE with a VampPrior', Sec. 4.1 and Appendix; the authors' code "
        "(github.com/jmtomczak/vae_vampprior: experiment.py defaults, utils/load_data.py load_dynamic_mnist)"
    ),
    model={
        "z_dim": 40,
        "hidden": (300, 300),
        "prior": "vamp",
        "likelihood": "bernoulli",
        "encoder": "gated-mlp",
        "decoder": "gated-mlp",
        "options": {"prior": {"components": 500}},
    },
    train={
        "dataset": "mnist",
        "batch_size": 100,
        "lr": 5e-4,
        "epochs": 2000,
        "kl_warmup": 100,
        # load_dynamic_mnist: images 50,000-59,999 of the training set are the validation set.
        "validation": 10000,
        "validation_split": "last",
        "patience": 50,
    },
    evaluation=(
        "log p(x) with 5000 importance samples (the authors' S) of the early-stopping best: load_run(DIR, "
        "which='best'), or pyro-vae export DIR --which best BUNDLE; pyro-vae evaluate DIR --ll-samples 5000 "
        "scores the last checkpoint"
    ),
    reference="test log p(x) -85.57 (VAE + VampPrior, dynamic MNIST; Table 2)",
    deviations=(
        "the guide's log-variance head is linear; the authors clip it with Hardtanh(-6, 2)",
        "plain Adam; the authors' AdamNormGrad normalises each gradient first",
        "early stopping after 50 epochs without improvement; the authors' code stops after more than 50",
    ),
)
