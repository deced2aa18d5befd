"""The trivial model: answers its input unchanged, so a benchmark measures the serving path only."""


def predict(x):
    return x
