"""Business rules, kept apart from the model so they can change without retraining."""

# Index -> name, in the order of the classes the estimator was trained on (iris.target_names).
LABELS = ("setosa", "versicolor", "virginica")

# Below this probability the answer is "uncertain": better no label than a wrong one.
CONFIDENCE_THRESHOLD = 0.6


def decide(probabilities: list[float], threshold: float = CONFIDENCE_THRESHOLD) -> dict:
    """The label for one row's class probabilities, or "uncertain" below the threshold."""
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    confidence = probabilities[best]
    return {
        "label": LABELS[best] if confidence >= threshold else "uncertain",
        "confidence": round(confidence, 4),
        "probabilities": {name: round(p, 4) for name, p in zip(LABELS, probabilities)},
    }
