"""Business rules for the sentiment answer, apart from the model."""

from __future__ import annotations

import os

LABELS = ("negative", "positive")

# Below this probability the answer is "uncertain". The image sets it through [env] in
# mlbuild.toml; a deployment may override it with -e SENTIMENT_THRESHOLD=...
THRESHOLD = float(os.environ.get("SENTIMENT_THRESHOLD", "0.55"))


def decide(text: str, positive_probability: float, threshold: float = THRESHOLD) -> dict:
    best = 1 if positive_probability >= 0.5 else 0
    confidence = positive_probability if best else 1.0 - positive_probability
    return {
        "text": text,
        "label": LABELS[best] if confidence >= threshold else "uncertain",
        "confidence": round(confidence, 4),
    }
