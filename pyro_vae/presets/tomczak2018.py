"""Tomczak & Welling 2018, "VAE with a VampPrior" (AISTATS), Sec. 4, one-layer VAE with the VampPrior."""

from pyro_vae.presets import Preset

PRESET = Preset(
    name="tomczak2018",
    summary="VAE + VampPrior (K = 500) on fixed-binarisation (static) MNIST (Tomczak & Welling 2018)",
    source=(
        "Tomczak & Welling 2018, 'VAE with a VampPrior', Sec. 4.1 and Appendix; the authors' code "
        "(github.com/jmtomczak/vae_vampprior: experiment.py defaults, utils/load_data.py load_static_mnist; "
        "its vae_experiment_log.txt runs dataset_name='static_mnist'); pythae's reproduction of -85.57 "
        "(github.com/clementchadebec/benchmark_VAE examples/scripts/reproducibility/vamp.py), which trains on "
        "Larochelle & Murray's fixed binarisation (binarized_mnist_*.amat) and lists dynamic-MNIST rows apart"
    ),
    model={
        "z_dim": 40,
        "hidden": (300, 300),
        "prior": "vamp",
        "likelihood": "bernoulli",
        "encoder": "gated-mlp",
        "decoder": "gated-mlp",
        # The authors' encoder clips log sigma^2 with Hardtanh(-6, 2): without it the warm-up's first epoch (beta = 0)
        # shrinks sigma to its floor, the VampPrior's components with it, and beta > 0 then meets a KL of ~1e13.
        "options": {"prior": {"components": 500}, "guide": {"log_var_min": -6.0, "log_var_max": 2.0}},
    },
    train={
        "dataset": "mnist",
        # Static MNIST: the training images are binarised once (pyro_vae.data.TRAIN_BINARIZE_SEED), not every epoch.
        "binarization": "fixed",
        "batch_size": 100,
        "lr": 5e-4,
        "epochs": 2000,
        "kl_warmup": 100,
        # Static MNIST's split is 50,000 / 10,000 / 10,000: images 50,000-59,999 of the training set validate.
        "validation": 10000,
        "validation_split": "last",
        # perform_experiment.py stops when more than 50 epochs in a row failed to improve (e > 50): the 51st stops.
        "patience": 51,
    },
    evaluation=(
        "log p(x) with 5000 importance samples (the authors' S) of the early-stopping best: load_run(DIR, "
        "which='best'), or pyro-vae export DIR --which best BUNDLE; pyro-vae evaluate DIR --ll-samples 5000 "
        "scores the last checkpoint"
    ),
    reference="test log p(x) -85.57 (one-layer VAE + VampPrior, static MNIST)",
    deviations=(
        "the fixed binarisation is the project's own draw from torchvision's grey MNIST (the same construction and "
        "split sizes as Larochelle & Murray's static MNIST, not their file; with their three .amat files, "
        "--dataset static-mnist --data-dir DIR trains on the file itself, binary already)",
        "the warm-up's beta is epoch / 100 from epoch 0 (0 in the first epoch); the authors' from epoch 1 (0.01)",
        "sigma = softplus(s), clamped to log sigma^2 in [-6, 2]; the authors' log sigma^2 is linear, then clipped",
        "plain Adam; the authors' AdamNormGrad normalises each gradient first",
    ),
)
