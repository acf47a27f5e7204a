"""The main job end to end at a toy size: data, labels, two trainings, retrieval, table and figure."""

import json

from deteclap import demo


def test_demo_writes_results_for_both_variants(tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--train-clips", "12", "--test-clips", "6", "--seconds", "2",
                      "--seeds", "0", "--steps", "2", "--set", "data.batch_size=4"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"cavmae", "or"}
    for variant in results.values():
        for direction in ("a2v", "v2a"):
            assert set(variant[direction]) == {"r1", "r5", "r10"}
            assert 0 <= variant[direction]["r1"] <= variant[direction]["r5"] <= variant[direction]["r10"] <= 100
    assert (out / "results.png").stat().st_size > 10_000
    table = (out / "table.txt").read_text()
    assert "cavmae" in table and "sumR difference OR - CAV-MAE" in table
    for variant in ("cavmae", "or"):
        lines = (out / "runs" / f"{variant}_seed0" / "metrics.jsonl").read_text().splitlines()
        log = [json.loads(line) for line in lines]
        assert log[-1]["step"] == 2
        assert (log[-1]["a2l"] > 0) == (variant == "or")  # only DETECLAP trains the label heads
