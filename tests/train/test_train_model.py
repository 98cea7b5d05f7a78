"""train_model in memory: per-epoch history, best-on-val selection, and epochs that end early."""
from __future__ import annotations

import torch
from torch import nn

from medalign.data.memory import ColumnDataset
from medalign.recipes.base import Recipe
from medalign.train.config import TrainConfig
from medalign.train.loop import train_model


class _Regress(Recipe):
    """y = w x; val metric ``err`` = |w - 2|, so the best epoch is the one closest to w = 2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch: dict) -> dict:
        return {"mse_loss": ((self.w * batch["x"] - batch["y"]) ** 2).mean()}

    def validation_end(self, outputs: list) -> dict:
        return {"err": float((self.w.detach() - 2.0).abs())}


def _data(n: int = 16) -> ColumnDataset:
    x = torch.linspace(-1, 1, n)
    return ColumnDataset({"x": x, "y": 2.0 * x})


def _tc(**kw) -> TrainConfig:
    base = dict(epochs=6, batch_size=4, optimizer="sgd", lr=0.5, momentum=0.0, scheduler="constant", grad_clip=None,
                amp=False, progress=False, tensorboard=False)
    return TrainConfig(**{**base, **kw})


def test_history_and_keep_best_select_on_val():
    torch.manual_seed(0)
    r = _Regress()
    # a far too large lr for the last epochs would be caught by keep_best: here we check the selection itself
    s = train_model(r, _data(), _data(8), _tc(monitor="err", monitor_mode="min"), keep_best=True)
    assert [h["epoch"] for h in s["history"]] == list(range(1, 7))
    errs = [h["val_err"] for h in s["history"]]
    assert s["best_epoch"] == 1 + errs.index(min(errs))
    assert abs(float((r.w.detach() - 2).abs()) - min(errs)) < 1e-6  # the best weights are loaded back
    assert s["run_dir"] is None and "best_checkpoint" not in s


def test_epoch_that_ends_early_does_not_hang():
    class Shrinking(torch.utils.data.Sampler):
        """Epoch e yields 4 - e batches: later epochs are shorter than epoch 0."""

        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch, start_batch=0):
            self.epoch = epoch

        def batches_per_epoch(self):
            return 4 - self.epoch

        def __iter__(self):
            return iter([[i, i + 1] for i in range(4 - self.epoch)])

        def __len__(self):
            return 4 - self.epoch

    s = train_model(_Regress(), _data(), None, _tc(epochs=3), sampler=Shrinking())
    assert s["epochs"] == 3 and s["steps"] == 4 + 3 + 2
