"""pythae's reproduction of the vanilla VAE on binary MNIST (Chadebec et al. 2022, "Pythae", NeurIPS D&B)."""

from pyro_vae.presets import Preset

PRESET = Preset(
    name="pythae",
    summary="pythae's vanilla VAE reproduction on binary MNIST: 1 x 400 hidden, 40 latents",
    source=(
        "github.com/clementchadebec/benchmark_VAE examples/scripts/reproducibility: vae.py (one 400-unit layer in "
        "encoder and decoder, Adam, seed 123), configs/binary_mnist/vae/vae_config.json (latent_dim 40, bce), "
        "README.md (NLL with 200 importance samples: 89.78, reference 89.9)"
    ),
    model={
        "z_dim": 40,
        "hidden": (400,),
        "prior": "standard",
        "likelihood": "bernoulli",
        "guide": "normal",
        "options": {"encoder": {"activation": "relu"}, "decoder": {"activation": "relu"}},
    },
    # batch 100, lr 1e-4 and 2000 epochs: configs/binary_mnist/vamp/base_training_config.json (the VAE's own
    # training config is not in the repository snapshot read).
    train={
        "dataset": "mnist",
        "binarization": "fixed",
        "batch_size": 100,
        "lr": 1e-4,
        # vae.py: MultiStepLR(milestones=[200, 350, 500, 750, 1000], gamma=10**(-1/5)).
        "lr_schedule": "multistep",
        "lr_milestones": (200, 350, 500, 750, 1000),
        "lr_gamma": 10 ** (-1 / 5),
        "epochs": 2000,
        "seed": 123,
        "validation": 10000,
        "validation_split": "last",
    },
    evaluation="pyro-vae evaluate DIR --ll-samples 200 (pythae: the mean of 5 rounds of 200 samples)",
    reference="test NLL 89.78 (pythae), 89.9 (Rezende & Mohamed 2015)",
    deviations=(
        "the fixed binarisation is the project's own draw from torchvision's grey MNIST, the last 10,000 training "
        "images held out; pythae uses Larochelle & Murray's file (50,000 / 10,000 / 10,000), which --dataset "
        "static-mnist --data-dir DIR reads when you have it",
    ),
)
