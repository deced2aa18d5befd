"""Sentiment of short English texts: a list of strings in, one answer per string out."""

from __future__ import annotations

from pathlib import Path

import joblib

from rules import decide

ARTIFACT = Path(__file__).parent / "artifacts" / "model.joblib"


class Model:
    def load(self) -> None:
        self.pipeline = joblib.load(ARTIFACT)
        self.positive_column = list(self.pipeline.classes_).index(1)

    def predict(self, texts: list[str]) -> list[dict]:
        if not texts:
            return []
        probabilities = self.pipeline.predict_proba(texts)[:, self.positive_column]
        return [decide(text, float(p)) for text, p in zip(texts, probabilities)]
