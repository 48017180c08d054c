"""The options of the sparse LSTM autoencoder (section ``[autoencoder]``), without torch.

The configuration is read and checked before any work, by every command, including runs that
never train a network; :mod:`.train` (which needs torch) re-exports it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

from .._config import StageConfig, register
from .._dataset import CHANNELS
from ..paper import PAPER_BATCH, PAPER_L1

__all__ = ["AutoencoderConfig", "DEFAULT_L1", "L1Reduction", "Precision", "Schedule"]

Schedule = Literal["constant", "cosine", "onecycle"]
L1Reduction = Literal["mean", "sum"]
Precision = Literal["float32", "bfloat16", "auto"]

#: Penalty for a channel the paper did not train (the stronger of the two).
DEFAULT_L1 = 1e-4


@register("autoencoder")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoencoderConfig(StageConfig):
    """Architecture and training of the sparse LSTM autoencoder (section ``[autoencoder]``).

    The defaults are the fast training recipe justified by ``benchmarks/bench_autoencoder.py`` (see
    ``docs/autoencoder.md``): the paper's family (bidirectional LSTM encoder and decoder, sparse
    16-neuron ReLU embedding with L1) made smaller, its decoder given the waveform's phase, trained
    with a large learning rate on a one-cycle schedule and small batches, for a fixed 40 epochs
    (about a minute per network on a 60 x 60 scan on one CPU core; ``make demo``: two channels in
    about 2 minutes; preset ``demo`` is the same). A fixed epoch count, never the clock, ends the
    default training, so the same command on the same data gives the same networks however busy
    the machine is. Preset ``fast`` is the 3-CPU-minute recipe of ``docs/autoencoder.md``
    ("Training speed"): 140 fixed epochs (about 1.1-1.3 CPU s each on the real 3600 loops, one
    thread, with bfloat16 steps where the CPU has native bfloat16: ``precision="auto"``), peak
    learning rate 8e-3, a weight average (``ema=0.99``) that is validated and kept, the L1
    penalty ramped in over the first 60 % of the run, and per-channel L1 strengths (x0.3 the
    paper's for resonance, x2 for piezoresponse) that keep 7-8 of 16 neurons active; it reached
    both published networks' held-out MSE in under 3 CPU minutes per channel. Preset ``paper`` is
    the published network and its training values.

    Attributes
    ----------
    hidden, depth, n_neurons, dropout
        LSTM units per direction, bidirectional layers in encoder and in decoder, embedding width,
        dropout after each recurrent layer.
    l1 : float or None
        Activity penalty on the embedding. None: the paper's value for the channel
        (1e-5 piezoresponse, 1e-4 resonance, 1e-4 otherwise), times 1800 (the paper's batch) when
        ``l1_reduction="mean"`` so that the per-loop strength equals the paper's, times ``l1_scale``.
    l1_scale : float or mapping of channel to float
        Multiplier on the paper's per-channel penalty when ``l1`` is None (1: the paper's
        strength); a mapping (TOML: ``l1_scale = {resonance = 0.6, piezoresponse = 2.0}``) gives
        each channel its own, 1 for channels it does not name. Preset ``fast`` uses
        ``{resonance = 0.3, piezoresponse = 2.0}``: the published networks' MSE in 140 epochs
        with 7-8 active neurons (see ``docs/autoencoder.md``).
    l1_reduction : {"mean", "sum"}
        ``"sum"``: ``l1 * sum |z|`` over the batch, as Keras 2.1.5 did (strength grows with the batch
        size); ``"mean"``: ``l1 * mean over loops of sum over neurons |z|`` (batch-size agnostic).
    l1_warmup : float
        Fraction of the run's progress over which the penalty ramps linearly from 0 to ``l1``
        (0: full strength from the start, as the paper). A fresh network's embedding is large, and
        the full penalty first drives it to zero (dead ReLUs) before the decoder has learned
        anything; ramping it lets the network learn the loops first, then prunes neurons. In a
        short run this decides how many neurons survive: 120 epochs on the real resonance loops
        kept 2 active neurons (held-out MSE 0.030) with 0.2 and 6 (0.015) with 0.6.
    center : bool
        Work around the training pixels' mean loop (subtracted before the encoder, added after
        the decoder; saved with the weights). The network then only learns how loops differ,
        which it does much sooner; the fitted network takes loops of the fitted length only.
        The paper's network (False) takes any length.
    n_phase : int
        Harmonics of the waveform's phase (``sin, cos(2 pi k step/n_steps)``, ``k = 1..n_phase``)
        joined to the repeated embedding at every decoder step (0: the paper's decoder, which must
        build the position in the waveform out of its own recurrence from a constant input).
        With the phase given, the decoder learns the loops' shapes many times sooner (see
        ``docs/autoencoder.md``). The encoder and the embedding layer are unchanged, but what the
        network learns to put in the embedding, and how sparse it is at a given L1, can differ
        (preset ``fast`` needed a stronger piezoresponse penalty with the phase input).
    bn_momentum : float
        Torch momentum of the batch norms' moving statistics, which inference uses. The paper's
        Keras 0.99 (torch 0.01) averages over ~100 batches: fine over 20,000 epochs, but in a short
        run at a large learning rate the averages lag the weights and the validation error stays
        near 1 for many epochs; 0.1 follows them.
    lr, batch_size, epochs, max_seconds, patience
        Peak learning rate of Adam; loops per batch; most epochs; wall-clock budget of the whole fit
        (training and refinement; None: no limit); epochs without improvement of the validation
        loss before stopping (0: never stop early). Epochs that end while the L1 penalty is still
        ramping in (epochs done / ``epochs`` below ``l1_warmup``) are not counted: the objective
        is still changing then, and the validation curve swings while neurons are pruned (the
        best checkpoint is still tracked through them).
    schedule : {"constant", "cosine", "onecycle"}
        Learning rate over the run's progress (the larger of epochs done / ``epochs`` and seconds
        spent / ``max_seconds``): constant; cosine decay to ``lr/100``; one-cycle (linear warm-up from
        ``lr/10`` over the first 10 %, then cosine decay to ``lr/100``).
    clip : float
        Largest gradient norm (0: no clipping).
    ema : float
        Decay of an exponential moving average of the weights (and batch-norm statistics),
        updated after every optimizer step (0: none). With it, the average is what is validated,
        checkpointed as best and returned; the optimizer still steps the live weights. At a
        large learning rate it turns a validation curve that swings by factors of several into
        a nearly monotone one (``docs/autoencoder.md``), so the best checkpoint and early
        stopping can be trusted. 0.99 averages over about 100 steps (two epochs of 3240 loops
        in batches of 64); the first steps use ``min(ema, (1 + t) / (10 + t))``.
    precision : {"float32", "bfloat16", "auto"}
        Arithmetic of the training steps' forward and backward passes. ``"bfloat16"`` runs them
        under ``torch.autocast`` in bfloat16 (the recurrent kernels and matrix products), those
        of the decoder refinement too; the weights, the optimizer, the loss, validation, the
        choice of the kept checkpoint and inference stay float32;
        ``"auto"`` is bfloat16 on a CPU with native bfloat16 arithmetic (AVX-512 BF16 or AMX, as
        oneDNN reports it) and float32 everywhere else (GPUs included). On the 2-core Xeon with
        AMX of ``docs/autoencoder.md`` it makes an epoch of the fast network ~1.5x cheaper; on a
        CPU without it, bfloat16 is emulated and slower, which ``"auto"`` avoids.
    val_fraction : float
        Fraction of pixels held out for validation (the last ``round(val_fraction*n)`` of
        ``numpy.random.default_rng(seed).permutation(n)``).
    seed : int or None
        Seeds initialisation, split, shuffling and dropout; None takes the run's seed.
    device : str
        ``"auto"`` (CUDA when present, else the input tensor's device or the CPU), ``"cpu"``,
        ``"cuda"``, ``"cuda:1"``...
    threads : int
        CPU threads for torch during the fit (0: leave torch's setting). Default 1: the fast
        network's matrices are small, and on a CPU shared with other busy processes more threads
        than free cores make PyTorch's threads wait on each other (an LSTM step measured 10-300x
        slower with 2 threads on a busy 2-core machine).
    refine_epochs : int
        Epochs of decoder refinement after training (0: none).
    refine_lr : float or None
        Learning rate of the refinement (None: ``lr / 10``).
    channels : tuple of str
        Channels the pipeline stage trains a network for (when present in the data).
    joint : bool
        Also train one joint network on all of ``channels`` present (at least two) at once: each
        step's input holds one normalized value per channel, one sparse embedding encodes them
        together and the decoder reconstructs every channel (``embedding_joint``,
        ``reconstruction_joint_<channel>``, ``models/joint/``). Its L1 penalty is the strongest of
        its channels' (:meth:`l1_for` of ``"piezoresponse+resonance"``). Off by default: the
        per-channel networks are always trained, the joint one in addition.
    """

    hidden: int = 32
    depth: int = 1
    n_neurons: int = 16
    dropout: float = 0.0
    l1: float | None = None
    l1_scale: float | dict[str, float] | tuple[tuple[str, float], ...] = 1.0
    l1_reduction: L1Reduction = "mean"
    l1_warmup: float = 0.2
    center: bool = True
    n_phase: int = 4
    bn_momentum: float = 0.1
    lr: float = 3e-3
    batch_size: int = 64
    epochs: int = 40
    max_seconds: float | None = None
    patience: int = 0
    schedule: Schedule = "onecycle"
    clip: float = 1.0
    ema: float = 0.0
    precision: Precision = "float32"
    val_fraction: float = 0.1
    seed: int | None = None
    device: str = "auto"
    threads: int = 1
    refine_epochs: int = 5
    refine_lr: float | None = None
    channels: tuple[str, ...] = ("piezoresponse", "resonance")
    joint: bool = False

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": dict(hidden=64, depth=4, n_neurons=16, dropout=0.2, n_phase=0, l1=None, l1_reduction="sum",
                      l1_warmup=0.0, center=False, bn_momentum=0.01, lr=3e-5, batch_size=1800, epochs=22570, max_seconds=None, patience=0,
                      schedule="constant", clip=0.0, threads=0, refine_epochs=13412, refine_lr=3e-5),
        "fast": dict(epochs=140, lr=8e-3, ema=0.99, l1_warmup=0.6, refine_epochs=5, precision="auto",
                     l1_scale={"resonance": 0.3, "piezoresponse": 2.0}),
        "demo": {},
    }

    def validate(self) -> None:
        for name, hi in (("hidden", 1024), ("depth", 8), ("n_neurons", 256), ("batch_size", 100_000),
                         ("epochs", 1_000_000)):
            self.check_number(name, lo=1, hi=hi, integer=True)
        self.check_number("dropout", lo=0, hi=0.95)
        self.check_number("l1", lo=0, hi=1000, optional=True)
        self._check_l1_scale()
        self.check_choice("l1_reduction", ("mean", "sum"))
        self.check_number("l1_warmup", lo=0, hi=1)
        self.check_number("n_phase", lo=0, hi=48, integer=True)
        self.check_number("bn_momentum", lo=0, lo_open=True, hi=1)
        for flag in ("center", "joint"):
            if not isinstance(getattr(self, flag), bool):
                self._fail(flag, "true or false", getattr(self, flag))
        self.check_number("lr", lo=0, lo_open=True, hi=1)
        self.check_number("max_seconds", lo=0, lo_open=True, hi=30 * 86400, optional=True)
        self.check_number("patience", lo=0, hi=1_000_000, integer=True)
        self.check_choice("schedule", ("constant", "cosine", "onecycle"))
        self.check_choice("precision", ("float32", "bfloat16", "auto"))
        self.check_number("clip", lo=0, hi=1e6)
        self.check_number("ema", lo=0, hi=0.99999)
        self.check_number("val_fraction", lo=0, hi=0.9)
        self.check_number("seed", lo=0, hi=2**32 - 1, integer=True, optional=True)
        self.check_number("threads", lo=0, hi=256, integer=True)
        self.check_number("refine_epochs", lo=0, hi=1_000_000, integer=True)
        self.check_number("refine_lr", lo=0, lo_open=True, hi=1, optional=True)
        if not isinstance(self.device, str) or not (
                self.device in ("auto", "cpu", "mps") or self.device.startswith("cuda")):
            self._fail("device", "'auto', 'cpu', 'mps' or 'cuda[:N]'", self.device)
        channels = self.channels
        if isinstance(channels, str) or not isinstance(channels, (tuple, list)) or not channels:
            self._fail("channels", "a non-empty list of channel names", channels)
        bad = [c for c in channels if c not in CHANNELS]
        if bad:
            self._fail("channels", "a list of: " + ", ".join(CHANNELS), list(channels))
        # TOML gives lists; keep the frozen config hashable.
        object.__setattr__(self, "channels", tuple(channels))

    def _check_l1_scale(self) -> None:
        value = self.l1_scale
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.check_number("l1_scale", lo=0, hi=1e6)
            return
        allowed = "a number >= 0 or a mapping of channel name to a number >= 0"
        try:
            pairs = sorted(dict(value).items())
        except (TypeError, ValueError):
            self._fail("l1_scale", allowed, value)
        for ch, x in pairs:
            if (ch not in CHANNELS or isinstance(x, bool) or not isinstance(x, (int, float))
                    or not math.isfinite(x) or x < 0):
                self._fail("l1_scale", allowed + " (channels: " + ", ".join(CHANNELS) + ")", value)
        # kept as sorted (channel, scale) pairs: the frozen config stays hashable
        object.__setattr__(self, "l1_scale", tuple((ch, float(x)) for ch, x in pairs))

    def l1_scale_for(self, channel: str | None) -> float:
        """The multiplier of the paper's penalty for ``channel`` (see :attr:`l1_scale`)."""
        if isinstance(self.l1_scale, tuple):
            return dict(self.l1_scale).get(channel or "", 1.0)
        return float(self.l1_scale)

    def l1_for(self, channel: str | None) -> float:
        """The activity penalty used for ``channel`` (see :attr:`l1`).

        A joint network's name ``"piezoresponse+resonance"`` gets the largest of its channels'.
        """
        if self.l1 is not None:
            return float(self.l1)
        if channel and "+" in channel:
            return max(self.l1_for(c) for c in channel.split("+"))
        base = PAPER_L1.get(channel or "", DEFAULT_L1) * self.l1_scale_for(channel)
        return base * PAPER_BATCH if self.l1_reduction == "mean" else base
