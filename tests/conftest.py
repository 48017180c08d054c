"""Shared fixtures: the real data in ../shared/data (used where it lies, never copied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()
MAT = DATA / "mixed_pzt_piezoresponse_loops.mat"
RESONANCE = DATA / "mixed_pzt_resonance_normalized.npy"
KERAS = DATA / "pretrained_keras"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def mat_path() -> Path:
    return _need(MAT)


@pytest.fixture(scope="session")
def resonance_path() -> Path:
    return _need(RESONANCE)


@pytest.fixture(scope="session")
def keras_dir() -> Path:
    return _need(KERAS)


@pytest.fixture(scope="session")
def real_raw_loops(mat_path):
    """Raw piezoresponse loops (60, 60, 96) and voltage (96,), read directly with scipy.io."""
    import scipy.io

    m = scipy.io.loadmat(mat_path)
    return m["Loopdata_mixed"].astype(float), m["Voltagedata_mixed"].ravel().astype(float)


@pytest.fixture(scope="session")
def real_resonance(resonance_path) -> np.ndarray:
    """Normalized real resonance loops, (3600, 96)."""
    return np.load(resonance_path, allow_pickle=False)
