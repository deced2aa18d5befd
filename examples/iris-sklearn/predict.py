"""Iris classifier: 4 measurements (cm) in, a species name and its probabilities out."""

from __future__ import annotations

from pathlib import Path

import joblib

from labels import decide

ARTIFACT = Path(__file__).parent / "artifacts" / "model.joblib"


class Model:
    def load(self) -> None:
        self.estimator = joblib.load(ARTIFACT)

    def predict(self, x: list[float] | list[list[float]]) -> list[dict]:
        """One row ``[sepal length, sepal width, petal length, petal width]`` or a list of rows."""
        rows = [x] if x and not isinstance(x[0], (list, tuple)) else x
        for row in rows:
            if len(row) != 4:
                raise ValueError(f"each row needs 4 measurements, got {len(row)}")
        probabilities = self.estimator.predict_proba(rows)
        return [decide([float(p) for p in row]) for row in probabilities]
