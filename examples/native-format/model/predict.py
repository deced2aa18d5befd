"""Serve an XGBoost model from its own JSON format: the library's loader, no pickle.

Input: a list of rows, each a list of 6 numbers. Output: one probability per row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xgboost as xgb

ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "model.json"
N_FEATURES = 6


class Model:
    def load(self) -> None:
        self.booster = xgb.Booster()
        self.booster.load_model(ARTIFACT)
        if self.booster.num_features() != N_FEATURES:
            raise RuntimeError(f"{ARTIFACT} expects {self.booster.num_features()} features, not {N_FEATURES}")

    def predict(self, rows: list[list[float]]) -> list[float]:
        matrix = np.asarray(rows, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != N_FEATURES:
            raise ValueError(f"expected rows of {N_FEATURES} numbers, got an array of shape {matrix.shape}")
        return self.booster.inplace_predict(matrix).tolist()
