"""Train a scikit-learn pipeline the way a notebook does, then hand the live object to mlbuild.

Everything specific lives in this script's ``__main__``: a custom transformer class, a
post-processing function and the wrapper class that ties them together. mlbuild.save() carries
them inside the payload (cloudpickle, by value), so the image needs none of this file.

    python train_and_save.py                  # regenerates ./model (and its mlbuild.lock)
    mlbuild image model -t churn:1

Options: --out DIR (default ./model), --no-lock (skip `mlbuild lock`), --expected FILE (also
write 100 held-out rows and the live object's predictions for them, as JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import mlbuild

HERE = Path(__file__).resolve().parent


class ClipOutliers(BaseEstimator, TransformerMixin):
    """Clip each feature to the [low, high] quantiles seen in training (business rule: one
    faulty sensor reading must not swing a score)."""

    def __init__(self, low: float = 0.01, high: float = 0.99) -> None:
        self.low = low
        self.high = high

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=float)
        self.lower_ = np.quantile(X, self.low, axis=0)
        self.upper_ = np.quantile(X, self.high, axis=0)
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=float), self.lower_, self.upper_)


def risk_band(probability: float) -> str:
    """Post-processing the business asked for: a band, not a raw probability."""
    if probability >= 0.8:
        return "high"
    if probability >= 0.5:
        return "medium"
    return "low"


class ChurnModel:
    """What gets served: the fitted pipeline plus the post-processing, one row per customer."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def predict(self, rows: list[list[float]]) -> list[dict]:
        probabilities = self.pipeline.predict_proba(np.asarray(rows, dtype=float))[:, 1]
        return [{"churn_probability": round(float(p), 6), "risk": risk_band(p)} for p in probabilities]


def train() -> tuple[ChurnModel, np.ndarray]:
    X, y = make_classification(n_samples=1200, n_features=8, n_informative=5, random_state=7)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=200, random_state=7)
    pipeline = Pipeline([
        ("clip", ClipOutliers()),
        ("scale", StandardScaler()),
        ("model", LogisticRegression(max_iter=500)),
    ]).fit(X_train, y_train)
    return ChurnModel(pipeline), X_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "model")
    parser.add_argument("--no-lock", action="store_true", help="do not run mlbuild lock on the result")
    parser.add_argument("--expected", type=Path, help="write 100 held-out rows + predictions here")
    args = parser.parse_args()

    model, X_test = train()
    saved = mlbuild.save(model, args.out, name="churn-model", overwrite=True)
    print(f"saved {saved.path} (python {saved.python}): {', '.join(saved.requirements)}")
    if not args.no_lock:
        mlbuild.lock(args.out)  # commit the lock with the model: a fresh clone builds hermetically
    if args.expected:
        rows = X_test[:100].tolist()
        args.expected.write_text(json.dumps({"rows": rows, "predictions": model.predict(rows)}))


if __name__ == "__main__":
    main()
