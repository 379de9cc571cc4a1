r"""Data-parallel training on ``torch.distributed``, launched by ``torchrun``: one model trained by N ranks.

Each rank ``join``\ s the process group from torchrun's environment (gloo on the CPU, nccl on CUDA with one GPU
per rank by ``LOCAL_RANK``) with a collective timeout, loads the whole data set and seeds the same, so all draw
the same binarisation and permutation each epoch; each global batch (``--batch-size``) is split into N contiguous
slices (``Ranks.shard``). ``DistributedStep`` wraps Pyro's ``ELBOModule`` (``elbo(model, guide)``) in
``DistributedDataParallel``; Pyro's loss is a sum over the local slice and DDP averages the gradients over
ranks, so each rank backpropagates N times its local loss, which gives the single-process gradient

.. math:: \frac{1}{N} \sum_{r=1}^{N} \nabla (N \mathcal{L}_r) = \nabla \sum_{i \in B} \mathcal{L}_i .

The standard-normal noise of Normal-family reparameterised samples (the diagonal, full-covariance and IAF
guides) is drawn for the whole global batch on every rank and sliced (``global_draws``), so those runs take the
very steps of one process, whatever N; other draws come from a per-rank stream (equal in distribution only).
Each step all-reduces the loss with a stop flag (``Ranks.agree_to_stop``); the test set is evaluated in blocks
shared out among the ranks (``sharded_elbo_sums``); a failed collective is a one-line ``CollectiveError``.
``DataParallel`` gathers all this as the ``pyro_vae.strategy.Strategy`` a ``Trainer`` is handed (``join_strategy``
picks it under torchrun, ``SingleProcess`` otherwise). docs/distributed.md has the details, what was measured, and
why the compiled objective is not used.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import inspect
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch
import torch.distributed as dist
from pyro.infer import ELBO
from torch import Tensor, nn
from torch.distributions import lowrank_multivariate_normal, multivariate_normal, normal
from torch.nn.parallel import DistributedDataParallel

from pyro_vae.beta import LatentScale
from pyro_vae.checks import check_number
from pyro_vae.config import TrainConfig
from pyro_vae.elbo_terms import EVAL_SEED, ELBOSums, ELBOTerms, elbo_sums
from pyro_vae.errors import UserError
from pyro_vae.interrupts import DeferredInterrupts
from pyro_vae.ranks import launched
from pyro_vae.strategy import SingleProcess, StopFlag

#: Seconds a collective may wait for the other ranks before it fails (``--collective-timeout``).
DEFAULT_TIMEOUT_S = 120.0
#: Rows of the test set per evaluation block; the blocks are shared out among the ranks.
EVAL_BLOCK = 2048
#: The modules whose reparameterised samples take their standard-normal noise from ``_standard_normal``.
_NORMAL_FAMILY = (normal, multivariate_normal, lowrank_multivariate_normal)


#: torch >= 2.14 names the option ``forward_sync_buffers`` (and warns on ``broadcast_buffers``).
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


class AgreedStop:
    """A stop request all ranks know of: ``requested`` once an all-reduce showed that some rank received Ctrl-C or
    SIGTERM (``Ranks.agree_to_stop``), ``signum`` the signal. ``signals`` is this rank's ``DeferredInterrupts``."""

    def __init__(self, signals: Any) -> None:
        self.signals = signals
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


class CollectiveError(UserError):
    """A collective operation failed: another rank died or stopped answering within the timeout."""


@dataclass
class Ranks:
    """This process's place in the process group: ``rank`` of ``world``, its ``device``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False
    #: What the ranks agreed about stopping (``agreed``), while training runs.
    stop: AgreedStop | None = None

    @property
    def writer(self) -> bool:
        """Whether this rank writes the run directory (rank 0)."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n rows (sizes differ by at most one, larger first, as ``tensor_split``)."""
        q, m = divmod(n, self.world)
        start = self.rank * q + min(self.rank, m)
        return slice(start, start + q + (self.rank < m))

    def all_reduce(self, values: Sequence[float]) -> list[float]:
        """The sums over ranks of ``values`` (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        with collective(self):
            dist.all_reduce(t)
        return t.tolist()

    def agreed(self, signals: Any) -> AgreedStop:
        """The stop decision the ranks share, made from each rank's ``DeferredInterrupts`` ``signals`` at every
        ``agree_to_stop``; the training loop asks it (never ``signals`` itself, which another rank may not have
        received yet) where it would ask ``signals``."""
        self.stop = AgreedStop(signals)
        return self.stop

    def agree_to_stop(self, *others: float) -> list[float]:
        """All-reduce this rank's stop flag, with ``others`` (summed too; returned): when any rank was asked to stop
        (Ctrl-C, SIGTERM), every rank's ``stop`` says so from now on, so that all stop at the same point."""
        stop = self.stop
        mine = stop is not None and stop.signals.requested
        stops, *sums = self.all_reduce([float(mine), *others])
        if stops and stop is not None and not stop.requested:
            stop.signum = stop.signals.signum or signal.SIGTERM  # SIGTERM: what torchrun sends every rank
        return sums

    def barrier(self) -> None:
        with collective(self):
            dist.barrier()

    def elbo_terms(self, model: nn.Module, guide: nn.Module, x: Tensor, num_samples: int = 1) -> ELBOTerms:
        """``pyro_vae.elbo_terms.elbo_terms`` of the test set ``x``, evaluated by all ranks together."""
        return sharded_elbo_sums(model, guide, x, num_samples, self).terms()

    def close(self) -> None:
        """Leave the process group, if ``join`` made it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def collective(ranks: Ranks) -> Iterator[None]:
    """Turn a failed collective inside the block into a one-line ``CollectiveError``."""
    try:
        yield
    except RuntimeError as err:  # gloo and nccl raise DistBackendError / RuntimeError subclasses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CollectiveError(
            f"rank {ranks.rank} of {ranks.world}: lost contact with the other ranks ({first[:160]})"
        ) from None


def join(device: torch.device, timeout_s: float | None = None) -> Ranks | None:
    """Join the process group of a ``torchrun`` launch (None when not launched by torchrun).

    gloo on the CPU; nccl on CUDA, with this rank on the GPU ``LOCAL_RANK``. ``timeout_s`` (default
    ``DEFAULT_TIMEOUT_S``) bounds how long a collective waits for a rank that stopped answering.
    """
    if not launched():
        return None
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    check_number(timeout_s, "--collective-timeout", positive=True, note="seconds")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"rank with LOCAL_RANK {local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                "start at most one rank per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as err:
            raise UserError(f"could not join the torchrun process group ({str(err).strip()[:160]})") from None
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def check_batches(ranks: Ranks, n_train: int, batch_size: int) -> None:
    """Every global batch (the last one too) must give each rank at least one example."""
    smallest = min(batch_size, n_train % batch_size or batch_size)
    if smallest < ranks.world:
        raise UserError(
            f"the smallest batch has {smallest} examples ({n_train} training examples, --batch-size {batch_size}), "
            f"fewer than the {ranks.world} ranks; choose a --batch-size whose last batch has >= {ranks.world}"
        )


def _generator(device: torch.device) -> torch.Generator:
    """The default generator of ``device`` (the run's random stream there)."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index or 0]
    return torch.default_generator


@contextlib.contextmanager
def global_draws(part: slice, n_global: int, generator: torch.Generator) -> Iterator[None]:
    """Inside the block, the standard-normal noise of Normal-family ``rsample``\\ s whose batch dimension (-2, else
    -1) has this rank's ``part`` of the global batch is drawn for all ``n_global`` rows from ``generator`` and
    sliced: each example gets the numbers it would get in one process drawing the whole batch at once (torch
    fills a tensor in blocks, so a smaller draw is not a prefix of a larger one). Other shapes draw as usual."""
    n_local = part.stop - part.start
    originals = [m._standard_normal for m in _NORMAL_FAMILY]
    fallback = originals[0]

    def draw(shape: Sequence[int], dtype: torch.dtype | None, device: Any) -> Tensor:
        shape = tuple(shape)
        for dim in (-2, -1):
            if len(shape) >= -dim and shape[dim] == n_local:
                full = list(shape)
                full[dim] = n_global
                eps = torch.empty(full, dtype=dtype, device=device).normal_(generator=generator)
                return eps.narrow(dim, part.start, n_local)
        return fallback(shape, dtype, device)

    for m in _NORMAL_FAMILY:
        m._standard_normal = draw  # torch.distributions has no hook for the noise source
    try:
        yield
    finally:
        for m, original in zip(_NORMAL_FAMILY, originals, strict=True):
            m._standard_normal = original


class BetaInput(nn.Module):
    """``fn`` run with its latent sites scaled by the 0-dim tensor argument beta (``pyro_vae.beta``), as a module
    holding ``fn`` as a submodule, so that DDP sees its parameters."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, beta: Tensor) -> Any:
        with LatentScale(beta):
            return self.fn(x)


class DistributedStep:
    """One rank's SVI step: ``step(global_batch, beta=b) -> the global batch's loss`` (a sum, as Pyro reports it).

    ``model`` and ``guide`` are modules; ``elbo`` any Pyro ELBO with ``differentiable_loss``. Call
    ``begin_epoch(epoch, first_step)`` before an epoch's steps. Each step ends with one all-reduce of the loss and
    of the stop flag (``Ranks.agree_to_stop``), so every rank stops after the same step.
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        elbo: ELBO,
        optimizer: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        clip_norm: float | None,
        ranks: Ranks,
    ) -> None:
        if not callable(getattr(elbo, "differentiable_loss", None)):
            raise UserError(
                f"the estimator {type(elbo).__name__} has no differentiable_loss, which DistributedDataParallel "
                "needs; train it in one process, or use an estimator that has one (iwae for a Renyi-type bound)"
            )
        if not (isinstance(model, nn.Module) and isinstance(guide, nn.Module)):
            raise UserError("distributed training needs a model and guide that are torch modules (nn.Module)")
        self.ranks = ranks
        self.optimizer = optimizer
        self.params = list(params)
        self.clip_norm = clip_norm
        device_ids = [ranks.device] if ranks.device.type == "cuda" else None
        # No buffer broadcast in forward: the ranks' buffers are equal by construction (same seed, no layer updates a
        # buffer in training), and the forward pass then holds no collective: only the gradients' all-reduce in
        # backward and this step's own all-reduce, which turn a lost rank into one line.
        with collective(ranks):  # DDP checks and broadcasts the parameters (and buffers, once)
            self.module = DistributedDataParallel(
                elbo(BetaInput(model), BetaInput(guide)), device_ids=device_ids, **_NO_FORWARD_BUFFER_SYNC
            )
        self.steps = 0
        self.epoch = 0
        self.step = 0

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        self.epoch = epoch
        self.step = first_step

    def _rank_seed(self, state: Tensor) -> int:
        digest = int.from_bytes(hashlib.blake2b(state.cpu().numpy().tobytes(), digest_size=8).digest(), "little")
        words = np.random.SeedSequence([digest, self.epoch, self.step, self.ranks.rank]).generate_state(2)
        return int(words[0]) << 31 ^ int(words[1])

    def __call__(self, batch: Tensor, beta: float = 1.0) -> float:
        ranks = self.ranks
        self.step += 1
        n = batch.shape[0]
        part = ranks.shard(n)
        x = batch[part]
        beta_t = torch.tensor(float(beta), dtype=batch.dtype, device=batch.device)
        main = _generator(batch.device)
        run_stream = torch.Generator(device=batch.device)
        run_stream.set_state(main.get_state())
        seed = self._rank_seed(run_stream.get_state())
        self.optimizer.zero_grad(set_to_none=True)
        devices = [batch.device] if batch.device.type == "cuda" else []
        validation = contextlib.nullcontext() if self.steps == 0 else pyro.validation_enabled(False)
        with torch.random.fork_rng(devices=devices), validation:
            # This rank's own stream for every draw global_draws does not take over.
            torch.default_generator.manual_seed(seed)
            if devices:
                _generator(batch.device).manual_seed(seed)
            with global_draws(part, n, run_stream):
                loss = self.module(x, beta_t)
                with collective(ranks):
                    (loss * ranks.world).backward()  # DDP averages: N x the local sum = the global batch's gradient
        main.set_state(run_stream.get_state())
        self.steps += 1
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        (total,) = ranks.agree_to_stop(float(loss.detach()))  # one all-reduce: the flag and the loss
        return total


def sharded_elbo_sums(
    model: nn.Module, guide: nn.Module, x: Tensor, num_samples: int, ranks: Ranks, block: int = EVAL_BLOCK
) -> ELBOSums:
    """The test set's ``ELBOSums`` with its blocks of ``block`` rows shared out round-robin among the ranks and
    summed: the same numbers as ``elbo_sums`` in one process (each block has its own seed)."""
    n_blocks = -(-x.shape[0] // block)
    mine = elbo_sums(model, guide, x, num_samples, EVAL_SEED, block, blocks=range(ranks.rank, n_blocks, ranks.world))
    recon, kl, n, mc = ranks.all_reduce([mine.recon, mine.kl, mine.n, float(mine.monte_carlo)])
    return ELBOSums(recon, kl, int(round(n)), mc > 0)


class DataParallel:
    """The ``pyro_vae.strategy.Strategy`` of one rank of a torchrun launch (``Ranks``): ``DistributedStep``, the test
    set shared out among the ranks, a stop all ranks agree on, rank 0 alone writing, and the ranks waiting for each
    other where it matters: before the first write (every rank has checked and read the run) and after each
    checkpoint (no rank goes on, or exits after a Ctrl-C, before rank 0 has written it; and all agree whether to
    stop)."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks
        self.writes = ranks.writer
        self.compiles = False  # DDP wraps Pyro's ELBOModule, whose loss is uncompiled (docs/distributed.md)
        self.step_holds_group = True
        self._step: DistributedStep | None = None

    def device(self, config: TrainConfig) -> torch.device:
        return self.ranks.device

    def make_step(
        self,
        model: nn.Module,
        guide: nn.Module,
        elbo: ELBO,
        optimizer: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        config: TrainConfig,
        n_train: int,
        jit: Callable[[], ELBO] | None = None,
    ) -> DistributedStep:
        """The ``DistributedStep`` of model and guide, once every global batch is known to reach every rank (``jit``
        is not used: ``compiles`` is False)."""
        check_batches(self.ranks, n_train, config.batch_size)
        self._step = DistributedStep(model, guide, elbo, optimizer, params, config.clip_norm, self.ranks)
        return self._step

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        if self._step is not None:
            self._step.begin_epoch(epoch, first_step)

    def elbo_terms(self, model: nn.Module, guide: nn.Module, x: Tensor, num_samples: int = 1) -> ELBOTerms:
        return self.ranks.elbo_terms(model, guide, x, num_samples)

    def stop_flag(self, signals: DeferredInterrupts) -> StopFlag:
        return self.ranks.agreed(signals)

    def checkpoint_due(self, due: bool) -> bool:
        # The ranks' clocks differ, and rank 0's save is followed by every rank's after_save: all must agree.
        return self.ranks.all_reduce([float(due)])[0] > 0

    def before_first_write(self) -> None:
        self.ranks.barrier()

    def after_save(self) -> None:
        # A barrier, and a signal that reached some ranks during the epoch's evaluation stops them all here.
        self.ranks.agree_to_stop()

    @contextlib.contextmanager
    def session(self, kept: Callable[[], str]) -> Iterator[None]:
        """Around a rank's run: a failed collective is one line ending with what is kept (``kept()``); a clean end
        waits for every rank and frees DDP first; the process group is left at the end."""
        try:
            yield
            # A clean end: no rank leaves while another still uses the group, and DDP, which holds it, is freed
            # first (else gloo may abort at exit: SIGABRT). The trainer has dropped its own reference to the step.
            self.ranks.barrier()
            self._step = None
            gc.collect()
        except CollectiveError as err:
            raise UserError(f"{err}; {kept()}") from None
        finally:
            self.ranks.close()


def join_strategy(device: torch.device, timeout_s: float | None = None) -> SingleProcess | DataParallel:
    """``DataParallel`` over the ranks of a torchrun launch (``join``), else ``SingleProcess``."""
    ranks = join(device, timeout_s)
    return SingleProcess() if ranks is None else DataParallel(ranks)
