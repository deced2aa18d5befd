"""Train a small gradient-boosted classifier and write it in XGBoost's own JSON format.

The "just the algorithm" path: no pickle, no training code in the image. model/predict.py is
written by hand and loads model/artifacts/model.json with the xgboost library alone.

    python train.py          # rewrites model/artifacts/model.json
    mlbuild image model -t native:1
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xgboost as xgb

HERE = Path(__file__).resolve().parent
N_FEATURES = 6  # model/predict.py checks request rows against this


def main() -> None:
    rng = np.random.default_rng(11)
    X = rng.normal(size=(2000, N_FEATURES))
    # A non-linear rule the trees have to learn: an interaction plus a threshold.
    y = ((X[:, 0] * X[:, 1] > 0.2) | (X[:, 2] > 1.0)).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "seed": 11, "nthread": 1},
        xgb.DMatrix(X, label=y),
        num_boost_round=40,
    )
    out = HERE / "model" / "artifacts" / "model.json"
    booster.save_model(out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
