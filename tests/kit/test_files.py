"""Metrics JSON and CSV files of the pipeline: deterministic, plain values."""

import json

import numpy as np
import pandas as pd
import torch

from ecif.kit.files import read_json, write_csv, write_json


def test_write_json_plain_and_sorted(tmp_path):
    path = write_json(tmp_path / "sub" / "m.json", {
        "b": np.float64(0.5), "a": {"n": np.int64(3), "ok": np.bool_(True), "t": torch.tensor([1.0, 2.0]),
                                    "arr": np.arange(2), 7: (1, 2)}})
    text = path.read_text()
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    back = read_json(path)
    assert back == {"a": {"7": [1, 2], "arr": [0, 1], "n": 3, "ok": True, "t": [1.0, 2.0]}, "b": 0.5}
    assert type(back["a"]["n"]) is int and json.loads(text) == back


def test_write_csv(tmp_path):
    frame = pd.DataFrame({"pair": [1, 2], "actual": [1 / 3, 2.0], "misaligned": [True, False]})
    path = write_csv(frame, tmp_path / "deep" / "t.csv")
    assert path.read_text().splitlines() == ["pair,actual,misaligned", "1,0.3333333333,True", "2,2,False"]
    write_csv(frame, path, float_format="%.3g", index=True, index_label="i")
    assert path.read_text().splitlines()[:2] == ["i,pair,actual,misaligned", "0,1,0.333,True"]
