"""Training the sparse LSTM autoencoder: configuration, the estimator, checkpoints, refinement.

The estimator :class:`Autoencoder` follows the scikit-learn contract: ``Autoencoder(config)`` only
stores its arguments, ``fit(X)`` trains and returns ``self``, learned state ends in ``_``.
It works on the loops as given (normalize them first, e.g. with ``switchscope.preprocess.normalize``;
the pipeline stage does this for you).

Training: Adam on MSE plus the L1 activity penalty of the embedding, a validation split by pixel,
a learning-rate schedule over the run's progress, gradient clipping, early stopping, the best and
the last checkpoint (safetensors + JSON, never pickle) and resumption from the last one. Every epoch
seeds its own shuffling and dropout from ``(seed, epoch)``, so a resumed run continues exactly as
the uninterrupted run would have. Then the paper's decoder refinement: embeddings fixed, decoder
retrained without dropout.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .._embedding import active_neurons  # noqa: F401  (re-exported: one definition)
from .._errors import ConfigError, ConvergenceWarning, DataError, NotFittedError, OutputError
from ..paper import PAPER_BATCH, PAPER_L1  # noqa: F401 (re-exported)
from ._options import DEFAULT_L1, AutoencoderConfig, L1Reduction, Precision, Schedule  # noqa: F401 (re-exported)
from .model import SparseLSTMAutoencoder

FORMAT = "switchscope-autoencoder"
FORMAT_VERSION = 1
METRIC_FIELDS = ("epoch", "loss", "mse", "val_loss", "val_mse", "lr", "seconds", "cpu_seconds")


# -- numerical pieces --------------------------------------------------------------------------


def l1_penalty(z: torch.Tensor, l1: float, reduction: L1Reduction = "mean") -> torch.Tensor:
    """Activity penalty of an embedding batch ``z`` of shape (batch, n_neurons).

    ``"mean"``: ``l1 * mean_b sum_j |z_bj|``; ``"sum"``: ``l1 * sum_bj |z_bj|`` (Keras 2.1.5).
    """
    total = z.abs().sum()
    return l1 * (total if reduction == "sum" else total / z.shape[0])


def lr_at(progress: float, lr: float, schedule: Schedule) -> float:
    """Learning rate at ``progress`` in [0, 1] of the run."""
    p = min(max(progress, 0.0), 1.0)
    low = lr / 100
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return low + (lr - low) * 0.5 * (1 + math.cos(math.pi * p))
    warm = 0.1
    if p < warm:
        return lr / 10 + (lr - lr / 10) * p / warm
    q = (p - warm) / (1 - warm)
    return low + (lr - low) * 0.5 * (1 + math.cos(math.pi * q))


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training steps for ``precision`` on ``device`` (None: float32)."""
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cpu":
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
        return torch.bfloat16 if native else None
    return None


def _forward(model: nn.Module, xb: torch.Tensor, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``model(xb)`` (reconstruction, embedding), under autocast to ``dtype`` when given; the
    outputs are float32 either way (the loss is computed in float32)."""
    if dtype is None:
        return model(xb)
    with torch.autocast(xb.device.type, dtype=dtype):
        rec, z = model(xb)
    return rec.float(), z.float()


def _check_loops(X: Any, name: str = "X") -> tuple[np.ndarray, Any]:
    """``X`` as a float array (n, steps); also returns the input (for dtype/device of outputs)."""
    like = X
    if isinstance(X, torch.Tensor):
        arr = X.detach().cpu().numpy()
    else:
        arr = np.asarray(X)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and name == "Z"):
        raise DataError(f"{name} must have shape (n_pixels, n_steps) (or (n_pixels, n_steps, n_channels) "
                        f"for a joint network), got {arr.shape}; flatten the grid with switchscope.flatten")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.shape[0] < 1 or arr.shape[1] < 2:
        raise DataError(f"{name} needs at least 1 pixel and 2 steps, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        pix, step = np.argwhere(bad)[0]
        pixels = np.unique(np.nonzero(bad)[0])
        raise DataError(
            f"{name} holds {int(bad.sum())} NaN/Inf value(s) in {pixels.size} pixel(s) (first at pixel "
            f"{int(pix)}, step {int(step)}); clean the loops first (switchscope.preprocess) or drop those pixels"
        )
    return arr, like


def _as_output(values: np.ndarray, like: Any) -> Any:
    """Return ``values`` in the type, dtype and device of the input ``like``."""
    if isinstance(like, torch.Tensor):
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        return torch.as_tensor(values, dtype=dtype, device=like.device)
    arr = np.asarray(like)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
    return values.astype(dtype, copy=False)


def _resolve_device(device: str, like: Any = None) -> torch.device:
    if device == "auto":
        if isinstance(like, torch.Tensor):
            return like.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from .._device import check_device

    return torch.device(check_device(device, "[autoencoder] device"))


# -- files -------------------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    _atomic_write_bytes(path, save(flat, metadata=metadata))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not path.is_file():
        raise DataError(f"checkpoint file {str(path)!r} is missing; train again or give the folder of a saved model")
    try:
        return load(path.read_bytes())
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise DataError(f"checkpoint file {str(path)!r} is corrupt or not safetensors ({type(exc).__name__}); "
                        "delete it and train again, or restore it from a copy") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{str(path)!r} is missing; give the folder of a saved autoencoder")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{str(path)!r} is corrupt JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                        "delete the folder and train again") from None
    if not isinstance(value, dict):
        raise DataError(f"{str(path)!r} does not hold a JSON object; delete the folder and train again")
    return value


def _write_json(path: Path, value: dict[str, Any]) -> None:
    _atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in METRIC_FIELDS})
    _atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _load_state_dict(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    if isinstance(module, SparseLSTMAutoencoder) and "offset" in tensors:
        module.set_offset(tensors["offset"])
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise DataError(f"checkpoint {str(path)!r} lacks layer weight {missing[0]!r} "
                        f"({len(missing)} missing); it is of another architecture or damaged")
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise DataError(f"checkpoint {str(path)!r}: weight {k!r} has shape {tuple(tensors[k].shape)}, "
                            f"the configured network needs {tuple(v.shape)}; use the config it was trained with")
    module.load_state_dict({k: tensors[k] for k in own})


def _optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(val)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                            groups: list[dict[str, Any]], path: Path) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"optimizer state in {str(path)!r} does not fit the network ({exc}); "
                        "delete the checkpoint folder and train again") from None


# -- the estimator -----------------------------------------------------------------------------


class Autoencoder:
    """The sparse bidirectional-LSTM autoencoder as a scikit-learn-like estimator.

    Parameters
    ----------
    config : AutoencoderConfig, optional
        Architecture and training (default: ``AutoencoderConfig()``, the fast defaults).
    channel : str, optional
        Channel the loops come from; picks the paper's L1 penalty when ``config.l1`` is None.

    Attributes
    ----------
    model_ : SparseLSTMAutoencoder
        The network (best checkpoint, then refined decoder), in eval mode.
    n_steps_ : int
        Sequence length seen in ``fit`` (default length of :meth:`decode`).
    n_channels_ : int
        Values per step seen in ``fit``: 1 for loops ``(n_pixels, n_steps)``, more for the joint
        network fitted on ``(n_pixels, n_steps, n_channels)`` (every output then has that shape).
    history_ : list of dict
        One row per epoch: epoch, loss, mse, val_loss, val_mse, lr, seconds (also ``metrics.csv``).
    refine_history_ : list of dict
        One row per refinement epoch (epoch 0 is the decoder before refinement): mse, val_mse.
    best_epoch_, best_val_loss_ : int, float
        Epoch of the kept weights and its validation loss (training loss without validation).
    embedding_history_ : list of (int, ndarray (n_pixels, n_neurons))
        Embedding of every pixel of ``X`` at improved checkpoints (epochs spaced at least 25 %
        apart, plus the best one): the frames of the training movie.
    train_index_, val_index_ : ndarray of int
        Pixels used for training and for validation.
    l1_ : float
        Activity penalty used.
    n_epochs_ : int
        Epochs run (including those of a resumed run).
    seconds_ : float
        Wall-clock seconds of training (including resumed parts) and refinement.

    Examples
    --------
    >>> import numpy as np
    >>> from switchscope.autoencoder import Autoencoder, AutoencoderConfig
    >>> X = np.sin(np.linspace(0, 6, 24))[None] * np.linspace(0.5, 1.5, 64)[:, None]
    >>> ae = Autoencoder(AutoencoderConfig(hidden=8, depth=1, epochs=2, refine_epochs=0, seed=0)).fit(X)
    >>> ae.transform(X).shape, ae.reconstruct(X).shape
    ((64, 16), (64, 24))
    """

    def __init__(self, config: AutoencoderConfig | None = None, *, channel: str | None = None) -> None:
        self.config = config
        self.channel = channel

    # -- helpers ------------------------------------------------------------------------------
    def _cfg(self) -> AutoencoderConfig:
        cfg = self.config if self.config is not None else AutoencoderConfig()
        if not isinstance(cfg, AutoencoderConfig):
            raise ConfigError(f"Autoencoder.config must be an AutoencoderConfig, got {type(cfg).__name__}")
        return cfg

    def _seed(self) -> int:
        s = self._cfg().seed
        return 0 if s is None else int(s)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this Autoencoder is not fitted yet; call fit(X) or Autoencoder.load(folder) first")

    def _new_model(self, cfg: AutoencoderConfig, n_channels: int = 1) -> SparseLSTMAutoencoder:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed())
            return SparseLSTMAutoencoder(cfg.hidden, cfg.depth, cfg.n_neurons, cfg.dropout, cfg.bn_momentum,
                                         cfg.n_phase, n_channels)

    def _check_input(self, X: Any) -> tuple[np.ndarray, Any]:
        """``_check_loops`` plus: as many channels per step as the fitted network takes."""
        arr, like = _check_loops(X)
        have = arr.shape[2] if arr.ndim == 3 else 1
        want = getattr(self.model_, "n_channels", 1)
        if have != want:
            shape = "(n_pixels, n_steps)" if want == 1 else f"(n_pixels, n_steps, {want})"
            raise DataError(f"X has {have} channel(s) per step, this autoencoder was fitted on {want}; "
                            f"give loops of shape {shape}")
        return arr, like

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        return {"config": self.config, "channel": self.channel}

    def set_params(self, **params: Any) -> Autoencoder:
        for k, v in params.items():
            if k not in ("config", "channel"):
                raise ConfigError(f"Autoencoder has no parameter {k!r}; parameters are: config, channel")
            setattr(self, k, v)
        return self

    # -- fit ----------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, *, checkpoint_dir: str | Path | None = None, resume: bool = False,
            callbacks: list[Callable[[dict[str, Any]], None]] | tuple = (), progress: bool = False) -> Autoencoder:
        """Train on loops ``X`` of shape (n_pixels, n_steps) (or (n_pixels, n_steps, 1)).

        Parameters
        ----------
        X : array or tensor of shape (n_pixels, n_steps) or (n_pixels, n_steps, n_channels)
            Normalized loops, all finite. With ``n_channels > 1`` one joint network reads all the
            channels of a step together and reconstructs each (the MSE averages them all, so give
            channels of comparable scale, e.g. each normalized).
        y : ignored
        checkpoint_dir : path, optional
            Folder for ``config.json``, ``metrics.csv``, ``best.safetensors``, ``last.safetensors``
            (model and Adam state), ``state.json`` and ``embedding_history.safetensors``, written
            after every epoch (atomically).
        resume : bool
            Continue the run whose last checkpoint is in ``checkpoint_dir`` (the same data and
            config); without a checkpoint there, start afresh.
        callbacks : list of callables
            Called after every epoch with that epoch's metrics row; an exception raised by a
            callback stops training (the checkpoint of that epoch is already on disk).
        progress : bool
            Show a tqdm progress bar with loss and val loss.

        Returns
        -------
        self
        """
        from ._distributed import setup

        cfg = self._cfg()
        arr, like = _check_loops(X)
        device = _resolve_device(cfg.device, like)
        dist, device = setup(device)
        old_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            self._fit(arr, cfg, device, checkpoint_dir, resume, list(callbacks), progress, dist)
        finally:
            if cfg.threads:
                torch.set_num_threads(old_threads)
        return self

    def _fit(self, arr: np.ndarray, cfg: AutoencoderConfig, device: torch.device,
             checkpoint_dir: str | Path | None, resume: bool, callbacks: list, progress: bool,
             dist: Any = None) -> None:
        from tqdm.auto import tqdm

        from ._distributed import failure, sync_batch_norms

        n, n_steps = arr.shape[:2]
        seed = self._seed()
        l1 = cfg.l1_for(self.channel)
        n_val = int(round(cfg.val_fraction * n))
        if n - n_val < 2:
            raise DataError(f"X has {n} pixels, too few to train with val_fraction={cfg.val_fraction}; "
                            "give at least 2 training pixels")
        perm = np.random.default_rng(seed).permutation(n)
        train_idx, val_idx = np.sort(perm[: n - n_val]), np.sort(perm[n - n_val:])
        Xall = torch.as_tensor(arr, dtype=torch.float32, device=device)
        Xtr, Xva = Xall[train_idx], Xall[val_idx]
        n_channels = arr.shape[2] if arr.ndim == 3 else 1

        model = self._new_model(cfg, n_channels).to(device)
        if cfg.center:
            model.set_offset(Xtr.mean(0))
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(), "channel": self.channel,
                "n_steps": n_steps, "n_pixels": n, "l1": l1, "n_channels": n_channels}

        ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        net: nn.Module = model
        if dist is None:
            (history, emb_hist, start_epoch, elapsed0, best_val, best_epoch, bad,
             best_state, ema_state) = self._start_or_resume(ckdir, resume, cfg, model, opt, meta, device)
        else:
            # Rank 0 alone reads and writes the checkpoint folder; the others get its state.
            dist.same_everywhere("loops or config", (arr.shape, float(np.sum(arr, dtype=np.float64)),
                                                     json.dumps(cfg.to_dict(), sort_keys=True, default=str)))
            start = None
            if dist.rank == 0:
                try:
                    start = self._start_or_resume(ckdir, resume, cfg, model, opt, meta, device)
                    start = _to_cpu((start, model.state_dict(), opt.state_dict()))
                except Exception as exc:
                    start = failure(exc)
            else:
                ckdir = None
            (history, emb_hist, start_epoch, elapsed0, best_val, best_epoch, bad,
             best_state, ema_state), weights, opt_state = dist.from_rank0(start)
            if dist.rank:
                model.load_state_dict(weights)
                opt.load_state_dict(opt_state)
                best_state = {k: v.to(device) for k, v in best_state.items()}
                if ema_state is not None:
                    ema_state = {k: v.to(device) for k, v in ema_state.items()}
            sync_batch_norms(model, True)
            net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

        ema = _WeightAverage(model, cfg.ema, ema_state) if cfg.ema else None
        scored = ema.model if ema is not None else model  # the network validated, kept and returned
        refine_share = 0.15 if cfg.refine_epochs else 0.0
        train_budget = cfg.max_seconds * (1 - refine_share) if cfg.max_seconds else None
        batches = max(1, math.ceil(len(train_idx) / cfg.batch_size))
        total_steps = cfg.epochs * batches
        t0 = time.perf_counter() - elapsed0
        # CPU seconds of this process (all its threads), carried over a resumed run's
        cpu0 = time.process_time() - (float(history[-1].get("cpu_seconds") or 0.0) if history else 0.0)
        last_epoch_time = 0.0
        stop_reason = "epochs"
        desc = f"autoencoder {self.channel or ''}".strip()
        if train_budget is not None:
            desc += f" (stops at {cfg.epochs} epochs or {train_budget:.0f} s)"
        bar = tqdm(total=cfg.epochs, initial=start_epoch, disable=not progress or bool(dist and dist.rank),
                   desc=desc, unit="epoch", leave=False)
        try:
            for epoch in range(start_epoch, cfg.epochs):
                elapsed = time.perf_counter() - t0
                if train_budget is not None and epoch > start_epoch:
                    over = elapsed + last_epoch_time > train_budget
                    if dist is not None:  # every rank stops at the same epoch
                        over = dist.max(float(over)) > 0
                    if over:
                        stop_reason = "max_seconds"
                        break
                te = time.perf_counter()
                sum_loss, sum_mse, count, lr, out_of_time = _train_epoch(
                    net, opt, Xtr, cfg, l1, seed, epoch, batches, total_steps, t0, train_budget, device, dist,
                    None if ema is None else (lambda step: ema.update(model, step)))
                if out_of_time:
                    stop_reason = "max_seconds"
                if not math.isfinite(sum_loss):
                    raise DataError(f"training diverged at epoch {epoch} (loss is not finite); lower "
                                    f"AutoencoderConfig.lr (now {cfg.lr}) or set clip > 0")
                row: dict[str, Any] = {"epoch": epoch, "loss": sum_loss / max(count, 1), "mse": sum_mse / max(count, 1),
                                       "lr": lr}
                if n_val:
                    vm, vp = _evaluate(scored, Xva, l1, cfg.l1_reduction, cfg.batch_size, dist)
                    row["val_mse"], row["val_loss"] = vm, vm + vp
                    score = row["val_loss"]
                else:
                    row["val_mse"] = row["val_loss"] = ""
                    score = row["loss"]
                last_epoch_time = time.perf_counter() - te
                row["seconds"] = time.perf_counter() - t0
                row["cpu_seconds"] = time.process_time() - cpu0
                history.append(row)
                improved = score < best_val
                if improved:
                    best_val, best_epoch, bad = score, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
                    if not emb_hist or epoch >= 1.25 * (emb_hist[-1][0] + 1):
                        emb_hist.append((epoch, _embed(scored, Xall)))
                        if ckdir is not None:
                            _save_history(ckdir, emb_hist)
                elif not (l1 and cfg.l1_warmup and (epoch + 1) / cfg.epochs < cfg.l1_warmup):
                    bad += 1  # epochs inside the L1 ramp do not count towards early stopping
                if ckdir is not None:
                    self._checkpoint(ckdir, model, opt, best_state if improved else None, history, epoch,
                                     row["seconds"], best_val, best_epoch, bad, ema)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}", val_loss=f"{row['val_loss']:.4g}" if n_val else "-")
                for cb in callbacks:
                    cb(dict(row))
                if stop_reason == "max_seconds":
                    break
                if cfg.patience and bad >= cfg.patience:
                    stop_reason = "patience"
                    break
        finally:
            bar.close()
            if dist is not None:
                sync_batch_norms(model, False)

        model.load_state_dict(best_state)
        model.eval()
        if best_epoch >= 0 and (not emb_hist or emb_hist[-1][0] != best_epoch):
            emb_hist.append((best_epoch, _embed(model, Xall)))
            if ckdir is not None:
                _save_history(ckdir, emb_hist)
        self.model_ = model
        self.n_steps_ = n_steps
        self.n_channels_ = n_channels
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.best_val_loss_ = best_val
        self.embedding_history_ = emb_hist
        self.train_index_, self.val_index_ = train_idx, val_idx
        self.l1_ = l1
        self.n_epochs_ = len(history)
        self.stop_reason_ = stop_reason
        self.refine_history_: list[dict[str, Any]] = []
        self.seconds_ = time.perf_counter() - t0
        if stop_reason == "max_seconds" and cfg.patience == 0 and len(history) < 5:
            warnings.warn(f"the autoencoder trained only {len(history)} epoch(s) within max_seconds={cfg.max_seconds}; "
                          "raise max_seconds or use a smaller network", ConvergenceWarning, stacklevel=3)
        if cfg.refine_epochs:
            budget = None
            if cfg.max_seconds:
                budget = max(cfg.max_seconds - self.seconds_, 0.05 * cfg.max_seconds)
            self._refine(Xall, cfg.refine_epochs, budget, progress)
        self.seconds_ = time.perf_counter() - t0
        if ckdir is not None:
            self.save(ckdir)

    @staticmethod
    def _start_or_resume(ckdir: Path | None, resume: bool, cfg: AutoencoderConfig, model: nn.Module,
                         opt: torch.optim.Optimizer, meta: dict[str, Any], device: torch.device) -> tuple:
        """The training state to start from: fresh, or the last checkpoint in ``ckdir`` (with
        ``resume``; the network, optimizer, history, best state and counters all restored).

        Returns ``(history, embedding_history, start_epoch, seconds_spent, best_val, best_epoch,
        bad_epochs, best_state, ema_state)`` (``ema_state``: the saved weight average, or None).
        """
        history: list[dict[str, Any]] = []
        emb_hist: list[tuple[int, np.ndarray]] = []
        start_epoch, elapsed0, best_val, best_epoch, bad = 0, 0.0, math.inf, -1, 0
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ema_state = None
        if ckdir is None:
            return history, emb_hist, start_epoch, elapsed0, best_val, best_epoch, bad, best_state, ema_state
        n, n_steps = meta["n_pixels"], meta["n_steps"]
        ckdir.mkdir(parents=True, exist_ok=True)
        last = ckdir / "last.safetensors"
        if last.exists() and not resume:
            raise OutputError(f"{str(ckdir)!r} already holds a training run; pass resume=True to continue it "
                              "or give an empty folder")
        if last.exists():
            saved = _read_json(ckdir / "config.json")
            for key in ("hidden", "depth", "n_neurons", "n_phase"):
                was = saved.get("config", {}).get(key, 0 if key == "n_phase" else None)
                if was != getattr(cfg, key):
                    raise DataError(
                        f"the checkpoint in {str(ckdir)!r} has {key}={was!r} but the "
                        f"config has {getattr(cfg, key)!r}; resume with the config it was trained with")
            if (saved.get("n_steps") != n_steps or saved.get("n_pixels") != n
                    or saved.get("n_channels", 1) != meta["n_channels"]):
                raise DataError(f"the checkpoint in {str(ckdir)!r} was trained on data of shape "
                                f"({saved.get('n_pixels')}, {saved.get('n_steps')}), got {(n, n_steps)}; "
                                "resume with the same loops")
            state = _read_json(ckdir / "state.json")
            tensors = _load_tensors(last)
            _load_state_dict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, last)
            if cfg.ema:
                ema_state = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")} or None
            _optimizer_from_tensors(opt, tensors, state.get("param_groups", []), last)
            best_state = {k: v.to(device) for k, v in _load_tensors(ckdir / "best.safetensors").items()}
            try:
                start_epoch = int(state["epoch"]) + 1
                elapsed0, best_val = float(state["seconds"]), float(state["best_val_loss"])
                best_epoch, bad = int(state["best_epoch"]), int(state["bad_epochs"])
                history = list(state["history"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{str(ckdir / 'state.json')!r} is incomplete; delete the folder and "
                                "train again") from None
            eh = ckdir / "embedding_history.safetensors"
            if eh.exists():
                t = _load_tensors(eh)
                emb_hist = [(int(e), z.numpy()) for e, z in zip(t["epochs"].tolist(), t["embeddings"])]
        _write_json(ckdir / "config.json", meta)
        return history, emb_hist, start_epoch, elapsed0, best_val, best_epoch, bad, best_state, ema_state

    def _checkpoint(self, ckdir: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    best_state: dict[str, torch.Tensor] | None, history: list[dict[str, Any]], epoch: int,
                    seconds: float, best_val: float, best_epoch: int, bad: int,
                    ema: _WeightAverage | None = None) -> None:
        if best_state is not None:
            _save_tensors(ckdir / "best.safetensors", best_state)
        otensors, groups = _optimizer_to_tensors(opt)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        if ema is not None:
            tensors.update({f"ema.{k}": v for k, v in ema.model.state_dict().items()})
        tensors.update(otensors)
        _save_tensors(ckdir / "last.safetensors", tensors)
        _write_metrics(ckdir / "metrics.csv", history)
        # state.json last: a run interrupted before it resumes from the previous, complete epoch.
        _write_json(ckdir / "state.json", {"epoch": epoch, "seconds": seconds, "best_val_loss": best_val,
                                           "best_epoch": best_epoch, "bad_epochs": bad, "param_groups": groups,
                                           "history": history})

    # -- refinement ---------------------------------------------------------------------------
    def refine(self, X: Any, epochs: int | None = None, *, progress: bool = False) -> Autoencoder:
        """The paper's decoder refinement: embeddings of ``X`` fixed, decoder retrained without dropout.

        The decoder runs in inference mode (no dropout, batch norm on its moving statistics, as
        it is used afterwards); the encoder is not touched. The kept decoder is the one with the
        lowest validation MSE (training MSE without validation) among the epochs, the starting
        decoder included, so refinement never raises the decoder's error on the pixels it scores.

        Parameters
        ----------
        X : array of shape (n_pixels, n_steps)
            The loops the autoencoder was fitted on.
        epochs : int, optional
            Default ``config.refine_epochs``.
        """
        self._check_fitted()
        arr, _ = self._check_input(X)
        device = next(self.model_.parameters()).device
        self._refine(torch.as_tensor(arr, dtype=torch.float32, device=device),
                     self._cfg().refine_epochs if epochs is None else int(epochs), None, progress)
        return self

    def _refine(self, Xall: torch.Tensor, epochs: int, budget: float | None, progress: bool) -> None:
        from tqdm.auto import tqdm

        cfg = self._cfg()
        model = self.model_
        n = Xall.shape[0]
        train_idx = getattr(self, "train_index_", np.arange(n))
        val_idx = getattr(self, "val_index_", np.arange(0))
        if train_idx.size and train_idx.max() >= n:
            train_idx, val_idx = np.arange(n), np.arange(0)
        model.eval()
        with torch.no_grad():
            Z = model.encode(Xall)
        dec = model.decoder
        dec.eval()
        opt = torch.optim.Adam(dec.parameters(), lr=cfg.refine_lr or cfg.lr / 10)
        ztr, xtr = Z[train_idx], Xall[train_idx]
        zva, xva = Z[val_idx], Xall[val_idx]

        def score() -> tuple[float, float]:
            mtr = _decoder_mse(model, ztr, xtr)
            mva = _decoder_mse(model, zva, xva) if len(val_idx) else math.nan
            return mtr, mva

        mtr, mva = score()
        best = mva if len(val_idx) else mtr
        best_state = {k: v.detach().clone() for k, v in dec.state_dict().items()}
        hist = [{"epoch": 0, "mse": mtr, "val_mse": mva}]
        seed = self._seed()
        t0 = time.perf_counter()
        base_lr = opt.param_groups[0]["lr"]
        amp = _autocast_dtype(cfg.precision, Xall.device)
        for epoch in tqdm(range(1, epochs + 1), disable=not progress, desc="refine decoder", leave=False):
            if budget is not None and time.perf_counter() - t0 > budget:
                break
            order = torch.as_tensor(np.random.default_rng([seed, 10**6 + epoch]).permutation(len(train_idx)),
                                    device=Xall.device)
            for g in opt.param_groups:
                g["lr"] = lr_at((epoch - 1) / max(epochs, 1), base_lr, "cosine")
            # The decoder trains in inference mode (no dropout, batch norm on its moving statistics).
            # cuDNN's recurrent kernels have no backward pass in that mode; the native ones do.
            with torch.backends.cudnn.flags(enabled=False):
                for b in range(0, len(order), cfg.batch_size):
                    idx = order[b:b + cfg.batch_size]
                    if amp is None:
                        rec = model.decode(ztr[idx], xtr.shape[1])
                    else:
                        with torch.autocast(Xall.device.type, dtype=amp):
                            rec = model.decode(ztr[idx], xtr.shape[1]).float()
                    loss = torch.mean((rec - xtr[idx]) ** 2)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.clip:
                        nn.utils.clip_grad_norm_(dec.parameters(), cfg.clip)
                    opt.step()
            mtr, mva = score()
            hist.append({"epoch": epoch, "mse": mtr, "val_mse": mva})
            s = mva if len(val_idx) else mtr
            if s < best:
                best = s
                best_state = {k: v.detach().clone() for k, v in dec.state_dict().items()}
        dec.load_state_dict(best_state)
        model.eval()
        self.refine_history_ = getattr(self, "refine_history_", []) + hist

    # -- inference ----------------------------------------------------------------------------
    def transform(self, X: Any) -> Any:
        """Embeddings (ReLU outputs) of loops ``X`` (n_pixels, n_steps) -> (n_pixels, n_neurons).

        Output follows the input: a numpy array of the input's float dtype, or a tensor on the
        input's device and dtype.
        """
        self._check_fitted()
        arr, like = self._check_input(X)
        device = next(self.model_.parameters()).device
        Z = _embed(self.model_, torch.as_tensor(arr, dtype=torch.float32, device=device))
        return _as_output(Z, like)

    def reconstruct(self, X: Any) -> Any:
        """Reconstructed loops ``decode(transform(X))``, shape (n_pixels, n_steps) (a joint network:
        (n_pixels, n_steps, n_channels))."""
        self._check_fitted()
        arr, like = self._check_input(X)
        device = next(self.model_.parameters()).device
        x = torch.as_tensor(arr, dtype=torch.float32, device=device)
        self.model_.eval()
        out = []
        with torch.no_grad():
            for b in range(0, len(x), 2048):
                out.append(self.model_(x[b:b + 2048])[0].cpu().numpy())
        return _as_output(np.concatenate(out), like)

    def decode(self, Z: Any, n_steps: int | None = None) -> Any:
        """Loops generated from embeddings ``Z`` (n, n_neurons) -> (n, n_steps) (a joint network:
        (n, n_steps, n_channels), the channels in the order it was fitted with).

        ``n_steps`` defaults to the length seen in ``fit``.
        """
        self._check_fitted()
        arr, like = _check_loops(Z, "Z") if np.ndim(Z) == 2 and np.shape(Z)[1] >= 2 else (np.asarray(Z), Z)
        n_neurons = self.model_.decoder.norm.num_features
        n_off = self.model_.offset.shape[0] if self.model_.offset.numel() else 0
        if n_off and n_steps is not None and int(n_steps) != n_off:
            raise DataError(f"this autoencoder was fitted with center=True on {n_off} steps "
                            f"and decodes only that length, got n_steps={n_steps}; fit with center=False")
        if arr.ndim != 2 or arr.shape[1] != n_neurons:
            raise DataError(f"Z must have shape (n, {n_neurons}) (one value per embedding neuron), got {arr.shape}")
        steps = self.n_steps_ if n_steps is None else int(n_steps)
        if steps < 1:
            raise DataError(f"n_steps must be >= 1, got {n_steps}")
        device = next(self.model_.parameters()).device
        z = torch.as_tensor(arr, dtype=torch.float32, device=device)
        self.model_.eval()
        out = []
        with torch.no_grad():
            for b in range(0, len(z), 2048):
                out.append(self.model_.decode(z[b:b + 2048], steps).cpu().numpy())
        nc = getattr(self.model_, "n_channels", 1)
        empty = np.zeros((0, steps) if nc == 1 else (0, steps, nc), np.float32)
        return _as_output(np.concatenate(out) if out else empty, like)

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` (final weights) and ``metrics.csv`` to a folder."""
        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = self._cfg()
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(), "channel": self.channel,
                "n_steps": self.n_steps_, "n_channels": getattr(self.model_, "n_channels", 1), "l1": self.l1_, "best_epoch": self.best_epoch_,
                "best_val_loss": self.best_val_loss_ if math.isfinite(self.best_val_loss_) else None,
                "n_epochs": self.n_epochs_, "seconds": self.seconds_, "stop_reason": self.stop_reason_,
                "refine_history": self.refine_history_,
                "n_pixels": len(self.train_index_) + len(self.val_index_),
                "train_index": self.train_index_.tolist(), "val_index": self.val_index_.tolist()}
        _save_tensors(d / "model.safetensors", self.model_.state_dict())
        _write_metrics(d / "metrics.csv", self.history_)
        _write_json(d / "config.json", meta)
        return d

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "cpu") -> Autoencoder:
        """Read a folder written by :meth:`save` (or by ``fit(checkpoint_dir=...)``)."""
        d = Path(directory)
        meta = _read_json(d / "config.json")
        if meta.get("format") != FORMAT:
            raise DataError(f"{str(d / 'config.json')!r} is not a switchscope autoencoder (format "
                            f"{meta.get('format')!r}); give a folder written by Autoencoder.save")
        raw = dict(meta.get("config", {}))
        if isinstance(raw.get("channels"), list):
            raw["channels"] = tuple(raw["channels"])
        # folders saved before the phase input existed hold decoders without it
        raw.setdefault("n_phase", 0)
        cfg = AutoencoderConfig.from_dict(raw)
        self = cls(cfg, channel=meta.get("channel"))
        weights = d / "model.safetensors"
        if not weights.exists():
            weights = d / "best.safetensors"
        model = self._new_model(cfg, int(meta.get("n_channels", 1)))
        _load_state_dict(model, _load_tensors(weights), weights)
        model.to(_resolve_device(device)).eval()
        self.model_ = model
        self.n_steps_ = int(meta.get("n_steps", 0)) or None
        self.n_channels_ = int(meta.get("n_channels", 1))
        self.l1_ = float(meta.get("l1", cfg.l1_for(self.channel)))
        self.best_epoch_ = int(meta.get("best_epoch", -1))
        bv = meta.get("best_val_loss")
        self.best_val_loss_ = math.inf if bv is None else float(bv)
        self.n_epochs_ = int(meta.get("n_epochs", 0))
        self.seconds_ = float(meta.get("seconds", 0.0))
        self.stop_reason_ = meta.get("stop_reason", "")
        self.refine_history_ = list(meta.get("refine_history", []))
        self.train_index_ = np.asarray(meta.get("train_index", []), dtype=int)
        self.val_index_ = np.asarray(meta.get("val_index", []), dtype=int)
        self.history_ = _read_metrics(d / "metrics.csv")
        eh = d / "embedding_history.safetensors"
        self.embedding_history_ = []
        if eh.exists():
            t = _load_tensors(eh)
            self.embedding_history_ = [(int(e), z.numpy()) for e, z in zip(t["epochs"].tolist(), t["embeddings"])]
        return self


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            rows.append({k: (float(v) if v not in ("", None) else "") for k, v in r.items()})
    for r in rows:
        r["epoch"] = int(r["epoch"])
    return rows


def _save_history(ckdir: Path, emb_hist: list[tuple[int, np.ndarray]]) -> None:
    _save_tensors(ckdir / "embedding_history.safetensors",
                  {"epochs": torch.tensor([e for e, _ in emb_hist], dtype=torch.int64),
                   "embeddings": torch.as_tensor(np.stack([z for _, z in emb_hist]))})


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested tuples, lists, dicts) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _embed(model: SparseLSTMAutoencoder, x: torch.Tensor) -> np.ndarray:
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for b in range(0, len(x), 2048):
            out.append(model.encode(x[b:b + 2048]).cpu().numpy())
    model.train(was)
    return np.concatenate(out)


class _WeightAverage:
    """Exponential moving average of a network's weights and batch-norm statistics.

    After optimizer step ``t`` every average moves towards the live value by ``1 - d`` with
    ``d = min(decay, (1 + t) / (10 + t))`` (the warm-up of TensorFlow's
    ``ExponentialMovingAverage``: early averages do not drag the random initialisation along).
    Integer buffers (batch-norm step counters) are copied.
    """

    def __init__(self, model: nn.Module, decay: float, state: dict[str, torch.Tensor] | None = None) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if state is not None:
            _load_state_dict(self.model, state, Path("last.safetensors (weight average)"))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        w = 1.0 - min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), w)
        for mine, live in zip(self.model.buffers(), model.buffers()):
            if mine.is_floating_point() and mine.shape == live.shape:
                mine.lerp_(live, w)
            else:
                mine.copy_(live)


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, Xtr: torch.Tensor, cfg: AutoencoderConfig,
                 l1: float, seed: int, epoch: int, batches: int, total_steps: int, t0: float,
                 train_budget: float | None, device: torch.device,
                 dist: Any = None, after_step: Callable[[int], None] | None = None
                 ) -> tuple[float, float, int, float, bool]:
    """One epoch of minibatch Adam on the training loops, in an order and with dropout drawn from
    ``(seed, epoch)`` alone (so a resumed run repeats an uninterrupted one). The learning rate and
    the L1 warm-up follow the run's progress: steps done out of all steps, or seconds spent out of
    the time budget when that is further along. Returns ``(sum of losses, sum of MSEs, loops seen,
    last learning rate, out of time)``; the sums are over loops, for the epoch's means.

    Under DistributedDataParallel (``dist``, ``model`` wrapped) every rank draws the same order,
    cuts the same global batches and trains on its share ``batch[rank::world]`` of each (the
    shard rule of ``DistributedSampler``, applied per batch so that nothing is padded or dropped);
    each rank's loss is weighted so that the gradients DDP averages are those of the global
    batch, and the returned sums are over all ranks (the one-process numbers).

    ``after_step(step)`` runs after every optimizer step (``step``: the run's step number), e.g.
    to update the weight average.
    """
    model.train()
    order = torch.as_tensor(np.random.default_rng([seed, epoch]).permutation(len(Xtr)), device=device)
    sum_loss = sum_mse = 0.0
    count = 0
    lr = cfg.lr
    out_of_time = False
    smallest = 2 if dist is None else max(2, dist.world)  # batch norm needs two samples, each rank one
    amp = _autocast_dtype(cfg.precision, device)
    dropout_seed = seed * 1_000_003 + epoch
    if dist is not None and dist.rank:  # independent dropout masks per rank
        dropout_seed = int(np.random.SeedSequence([seed, epoch, dist.rank]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(dropout_seed)
        for b in range(batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if len(idx) < smallest:
                continue
            p = (epoch * batches + b) / total_steps
            if train_budget is not None:
                spent = (time.perf_counter() - t0) / train_budget
                if dist is not None:  # one clock for all ranks: the same learning rate and stop
                    spent = dist.max(spent)
                if spent >= 1.0 and count:
                    # out of time mid-epoch (a slow or busy CPU): score what we have
                    out_of_time = True
                    break
                p = max(p, spent)
            lr = lr_at(p, cfg.lr, cfg.schedule)
            l1_now = l1 * min(1.0, p / cfg.l1_warmup) if cfg.l1_warmup else l1
            for g in opt.param_groups:
                g["lr"] = lr
            if dist is not None:
                part_loss, part_mse, n_r = _train_step_ddp(model, opt, Xtr, idx, cfg, l1_now, dist, amp)
                sum_loss, sum_mse, count = sum_loss + part_loss, sum_mse + part_mse, count + n_r
                if after_step is not None:
                    after_step(epoch * batches + b)
                continue
            xb = Xtr[idx]
            rec, z = _forward(model, xb, amp)
            mse = torch.mean((rec - xb) ** 2)
            loss = mse + l1_penalty(z, l1_now, cfg.l1_reduction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            if after_step is not None:
                after_step(epoch * batches + b)
            sum_loss += float(loss.detach()) * len(idx)
            sum_mse += float(mse.detach()) * len(idx)
            count += len(idx)
    if dist is not None:
        sum_loss, sum_mse, total = dist.sum(sum_loss, sum_mse, count)
        count = int(total)
    return sum_loss, sum_mse, count, lr, out_of_time


def _train_step_ddp(model: nn.Module, opt: torch.optim.Optimizer, Xtr: torch.Tensor, idx: torch.Tensor,
                    cfg: AutoencoderConfig, l1: float, dist: Any,
                    amp: torch.dtype | None = None) -> tuple[float, float, int]:
    """One step on this rank's share of the global batch ``idx``; returns this rank's part of the
    global batch's (loss x loops, MSE x loops, loops).

    DDP averages the ranks' gradients, so rank ``r`` with ``n_r`` of the ``n`` loops minimizes
    ``w * mse_r + w * pen_r`` with ``w = n_r * world / n`` (``"mean"`` penalty), or
    ``w * mse_r + world * pen_r`` (``"sum"``: the global penalty is the sum of the ranks'): the
    average over ranks is then the one-process loss of the global batch.
    """
    local = idx[dist.rank::dist.world]
    n_r, n = len(local), len(idx)
    xb = Xtr[local]
    rec, z = _forward(model, xb, amp)
    mse = torch.mean((rec - xb) ** 2)
    pen = l1_penalty(z, l1, cfg.l1_reduction)
    w = n_r * dist.world / n
    loss = w * mse + (w if cfg.l1_reduction == "mean" else dist.world) * pen
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    opt.step()
    m, q = float(mse.detach()), float(pen.detach())
    return m * n_r + q * (n_r if cfg.l1_reduction == "mean" else n), m * n_r, n_r


def _evaluate(model: SparseLSTMAutoencoder, x: torch.Tensor, l1: float, reduction: L1Reduction,
              batch_size: int, dist: Any = None) -> tuple[float, float]:
    """(MSE, penalty) of ``x`` in inference mode; the penalty is averaged over batches of
    ``batch_size`` as Keras reports ``val_loss``. Under DDP (``dist``) the ranks share the batches
    (batch ``k`` on rank ``k % world``) and the sums are added over ranks: every rank gets the
    one-process value."""
    was = model.training
    model.eval()
    sse = pen = 0.0
    with torch.no_grad():
        for k, b in enumerate(range(0, len(x), batch_size)):
            if dist is not None and k % dist.world != dist.rank:
                continue
            xb = x[b:b + batch_size]
            rec, z = model(xb)
            sse += float(torch.sum((rec - xb) ** 2))
            pen += float(l1_penalty(z, l1, reduction)) * len(xb)
    model.train(was)
    if dist is not None:
        sse, pen = dist.sum(sse, pen)
    return sse / x.numel(), pen / len(x)


def _decoder_mse(model: SparseLSTMAutoencoder, z: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        sse = 0.0
        for b in range(0, len(z), 2048):
            sse += float(torch.sum((model.decode(z[b:b + 2048], x.shape[1]) - x[b:b + 2048]) ** 2))
    return sse / x.numel()
