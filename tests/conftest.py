"""Shared fixtures: one tiny synthetic dataset per test session (read-only: copy before editing)."""

from __future__ import annotations

import pytest

from semimer.utils import setup_logging

# Bind semimer's log handler to the session's stderr now, so a later `main()` inside a test with
# capsys does not attach it to a capture stream that is closed after that test.
setup_logging(False)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """``(dataset_dir, test_labels_csv)`` of the ``tiny`` synthetic preset, seed 0, .npy layout."""
    from semimer.data.synth import generate

    out = tmp_path_factory.mktemp("tiny")
    ds = generate(out, "tiny", seed=0)
    return ds, out / "test-labels.csv"
