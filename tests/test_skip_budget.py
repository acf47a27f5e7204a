"""data.max_skip_fraction: with data.on_error=skip a training run stops, naming the top reasons, when
a loader skipped more than that fraction of its epoch's samples (both loaders, real corrupt shards)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deteclap.data.budget import SkipBudgetExceeded, skip_budget_message
from deteclap.data.common import Skipped
from tests.test_loader import all_keys, corrupt, make_cfg, rewrite_shards


def test_message_names_the_top_reasons_with_an_example() -> None:
    skipped = [Skipped("a.tar", f"k{i}", "corrupt_mp4") for i in range(3)] + [Skipped("b.tar", "z", "bad_audio")]
    assert skip_budget_message(skipped, 400, 0.01) is None                 # 4 of 400: at the budget
    assert skip_budget_message(skipped, 0, 0.0) is None                    # epoch size unknown: no budget
    message = skip_budget_message(skipped, 399, 0.01)
    assert message.startswith("4 of this epoch's 399 samples were skipped (1.0% > data.max_skip_fraction=0.01)")
    assert "corrupt_mp4: 3 (e.g. a.tar: sample k0); bad_audio: 1 (e.g. b.tar: sample z)" in message
    assert "raise data.max_skip_fraction" in message


@pytest.mark.parametrize("loader", ["reference", "dali"])
def test_training_stops_when_an_epoch_skips_too_much(shard_dir: Path, tmp_path: Path, loader: str) -> None:
    from deteclap.train import training_batches

    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    bad_key = all_keys(shard_dir)[4]
    cfg = make_cfg(rewrite_shards(shard_dir, tmp_path / "bad", corrupt(bad_key, "mp4")), batch=2)
    cfg.data.on_error, cfg.data.loader, cfg.data.dali_device = "skip", loader, "cpu"
    cfg.data.max_skip_fraction = 0.2                           # 1 of 8 skipped: within the budget
    batches = training_batches(cfg, 0, 1, 0, 0)
    epochs = {next(batches)[0] for _ in range(8)}               # 3 or 4 batches an epoch: past its end
    batches.close()                                            # (its DALI pipeline shut down now)
    assert {0, 1} <= epochs
    cfg.data.max_skip_fraction = 0.1
    with pytest.raises(SkipBudgetExceeded, match=rf"1 of this epoch's 8 samples .* corrupt_mp4: 1 \(e.g. "
                                                 rf".*train-000001.tar: sample {bad_key}\)"):
        batches = training_batches(cfg, 0, 1, 0, 0)
        for _ in range(8):
            next(batches)


def test_train_stops_with_a_message_and_exit_4_when_the_budget_is_spent(monkeypatch, capsys):
    """train.py's command line turns a spent skip budget into one error line and exit code 4, not a traceback."""
    import deteclap.train as train_app
    from tests.conftest import REPO

    def spent(cfg, resume=False):
        raise SkipBudgetExceeded("3 of this epoch's 8 samples were skipped (max 0.01): corrupt_mp4: 3")

    monkeypatch.setattr(train_app, "train", spent)
    code = train_app.main(["--config", str(REPO / "configs" / "tiny.json")])
    assert code == train_app.DATA_EXIT == 4
    assert "error: 3 of this epoch's 8 samples were skipped" in capsys.readouterr().err
