"""The shared resumable training loop (nucleistyle.training) on a toy task."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from nucleistyle.errors import NucleistyleError
from nucleistyle.torchutils import LossHistory, TrainingDiverged, check_finite
from nucleistyle.training import TrainingPlan, Window, train
from tests.conftest import read_history


class Toy:
    """A linear regression on batches drawn from the global torch generator (so a resume that
    lost the RNG state would not reproduce the uninterrupted run)."""

    def __init__(self, fail_at: int | None = None, nan_at: int | None = None) -> None:
        self.net = torch.nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)
        self.fail_at, self.nan_at = fail_at, nan_at

    def step(self, iteration: int) -> dict[str, float]:
        if iteration == self.fail_at:
            raise RuntimeError("simulated crash")
        x = torch.randn(4, 3)
        loss = ((self.net(x) - x.sum(1, keepdim=True)) ** 2).mean()
        if iteration == self.nan_at:
            loss = loss * float("nan")
        check_finite({"loss": float(loss.detach())}, iteration + 1, None)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), "lr": 0.1 * (iteration + 1)}

    def evaluate(self, iteration: int) -> dict[str, float]:
        return {"weight_norm": float(self.net.weight.detach().norm())}

    def state(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])

    def model_file(self, iteration: int, history: LossHistory) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "iteration": iteration}


def _plan(tmp_path: Path, budget: int = 7, **changes: Any) -> TrainingPlan:
    settings: dict[str, Any] = {
        "budget": budget,
        "budget_key": "toy.iterations",
        "seed": 3,
        "log_every": 2,
        "checkpoint_every": 2,
        "evaluate_every": 3,
        "fingerprint": {"toy": 1},
        "checkpoint": tmp_path / "ckpt.pt",
        "resume_ignores": ("budget",),
        "checkpoint_format": "toy/1",
        "instant": ("lr",),
        "name": "toy",
    }
    return TrainingPlan(**{**settings, **changes})


def test_a_crashed_run_resumes_to_the_uninterrupted_weights_and_history(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(_plan(straight), lambda state: Toy(), straight / "m.pt", straight / "h.tsv")
    resumed = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated crash"):  # after the checkpoint at 4
        train(_plan(resumed), lambda state: Toy(fail_at=4), resumed / "m.pt", resumed / "h.tsv")
    assert torch.load(resumed / "ckpt.pt", weights_only=True)["iteration"] == 4
    assert not (resumed / "m.pt").exists()
    train(_plan(resumed), lambda state: Toy(), resumed / "m.pt", resumed / "h.tsv")
    a = torch.load(straight / "m.pt", weights_only=True)
    b = torch.load(resumed / "m.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 7
    for key, value in a["net"].items():
        torch.testing.assert_close(b["net"][key], value, rtol=0, atol=0)
    pd.testing.assert_frame_equal(read_history(straight / "h.tsv"), read_history(resumed / "h.tsv"))
    history = pd.read_csv(straight / "h.tsv", sep="\t")
    losses = history.dropna(subset="loss")
    assert losses["iteration"].tolist() == [2, 4, 6, 7]
    assert losses["lr"].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.7])  # instant, not averaged
    assert losses["sec_per_it"].notna().all()
    evaluated = history.dropna(subset="weight_norm")
    assert evaluated["iteration"].tolist() == [3, 6, 7]
    assert (evaluated["cpu_s"] > 0).all() and evaluated["wall_s"].is_monotonic_increasing


def test_a_checkpoint_beyond_the_budget_writes_its_model_and_trains_no_more(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(_plan(tmp_path), lambda state: Toy(), tmp_path / "a.pt")
    with caplog.at_level("WARNING"):
        train(_plan(tmp_path, budget=5), lambda state: Toy(fail_at=0), tmp_path / "b.pt")
    assert "at iteration 7, beyond the budget of 5 iterations (toy.iterations)" in caplog.text
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert b["iteration"] == 7
    torch.testing.assert_close(b["net"]["weight"], a["net"]["weight"], rtol=0, atol=0)


def test_a_diverged_run_keeps_its_checkpoint_and_writes_the_history(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="iteration 6"):
        train(_plan(tmp_path), lambda state: Toy(nan_at=5), tmp_path / "m.pt", tmp_path / "h.tsv")
    assert not (tmp_path / "m.pt").exists()
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iteration"] == 4
    assert pd.read_csv(tmp_path / "h.tsv", sep="\t")["iteration"].tolist() == [2, 3, 4]


def test_a_checkpoint_of_another_kind_or_configuration_is_refused(tmp_path: Path) -> None:
    train(_plan(tmp_path, budget=2), lambda state: Toy(), tmp_path / "m.pt")
    with pytest.raises(NucleistyleError, match=r"ckpt\.pt is not a toy training checkpoint"):
        train(_plan(tmp_path, checkpoint_format="other/1"), lambda state: Toy(), tmp_path / "x")
    with pytest.raises(NucleistyleError, match=r"ckpt\.pt .*toy = 1, expected 2"):
        train(_plan(tmp_path, fingerprint={"toy": 2}), lambda state: Toy(), tmp_path / "x")


def test_the_window_averages_values_and_keeps_instant_ones_as_they_were() -> None:
    window = Window(("lr",))
    window.add({"loss": 1.0, "lr": 0.5})
    window.add({"loss": 3.0, "lr": 0.25})
    assert window.means() == {"loss": 2.0, "lr": 0.25}
    again = Window(("lr",), window.state())
    again.add({"loss": 5.0, "lr": 0.1})
    assert again.means() == {"loss": 3.0, "lr": 0.1}
