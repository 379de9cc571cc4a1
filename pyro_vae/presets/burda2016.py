"""Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders" (ICLR), Sec. 5, one stochastic layer."""

from pyro_vae.presets import Preset

PRESET = Preset(
    name="burda2016",
    summary="IWAE/VAE on dynamically binarised MNIST, 1 stochastic layer (Burda et al. 2016)",
    source=(
        "Burda et al. 2016, 'Importance Weighted Autoencoders', Sec. 5 and Appendix; the authors' code "
        "(github.com/yburda/iwae: datasets.py binarized_mnist(n_validation=400), experiments.py)"
    ),
    model={
        "z_dim": 50,
        "hidden": (200, 200),
        "prior": "standard",
        "likelihood": "bernoulli",
        "guide": "normal",
        "options": {"encoder": {"activation": "tanh"}, "decoder": {"activation": "tanh"}},
    },
    train={
        "dataset": "mnist",
        # Burda et al.: every training image is binarised afresh each time it is used.
        "binarization": "dynamic",
        "batch_size": 20,
        "lr": 1e-3,
        "lr_schedule": "burda",
        "epochs": 3280,
        "adam_eps": 1e-4,
        # The authors' code holds out the last 400 of the 60,000 training images (not shuffled): 59,600 are
        # trained on; the paper itself only speaks of MNIST's 60,000 / 10,000 train / test split.
        "validation": 400,
        "validation_split": "last",
    },
    evaluation="pyro-vae evaluate DIR --ll-samples 5000 (k = 5000 importance samples on the test set)",
    reference="test log p(x) -86.76 (VAE k=1), -85.54 (IWAE k=5), -84.78 (IWAE k=50); Table 1, 1 stochastic layer",
    deviations=(
        "the decoder's output bias is not set from the training means (the authors' get_train_bias_np)",
        "the rates are lr * 10^(-i/7) exactly; the authors' code rounds them (1e-4 * round(10^(1-i/7), 1))",
        "the training images are binarised once per epoch, the authors' code per minibatch (both dynamic)",
    ),
)
