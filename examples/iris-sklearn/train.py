"""Train the iris model and write artifacts/model.joblib. Deterministic: same data, same solver,
fixed random_state, so a rerun gives the same model (the committed artefact came from this)."""

from __future__ import annotations

from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from labels import LABELS

OUT = Path(__file__).parent / "artifacts" / "model.joblib"


def main() -> None:
    iris = load_iris()  # bundled with scikit-learn: no download
    assert tuple(iris.target_names) == LABELS
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    model.fit(iris.data, iris.target)
    OUT.parent.mkdir(exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    joblib.dump(model, tmp)
    tmp.replace(OUT)
    print(f"wrote {OUT} (training accuracy {model.score(iris.data, iris.target):.3f})")


if __name__ == "__main__":
    main()
