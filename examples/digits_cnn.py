"""A small CNN on scikit-learn's 8x8 digits, trained through the chainrule service, exported to
ONNX and served by onnxruntime with the same predictions.

    chainrule serve                                   # in another terminal (or any running stack)
    python -m pip install -e ".[examples]"            # onnx, onnxruntime, scikit-learn
    python examples/digits_cnn.py                     # --url, --api-key as for `chainrule submit`

scikit-learn ships the data set inside its package (1,797 images, no download). The last 360
images are held out; the job trains on the rest and evaluates on them as it goes.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import graphspec
import runtime
from graphspec import GraphBuilder

HELD_OUT = 360


def digits() -> tuple[dict, dict]:
    """(training, test) tensors: images scaled to [0, 1] as [N, 1, 8, 8] float32, int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, np.newaxis]
    labels = data.target.astype(np.int64)
    return ({"x": images[:-HELD_OUT], "label": labels[:-HELD_OUT]},
            {"x": images[-HELD_OUT:], "label": labels[-HELD_OUT:]})


def cnn() -> graphspec.Graph:
    g = GraphBuilder("digits_cnn", dtype="float32")
    x = g.input("x", ["N", 1, 8, 8], doc="an 8x8 grey image, values in [0, 1]")
    h = g.max_pool2d(g.relu(g.conv2d(x, 16, 3, padding=1)), 2)      # [N, 16, 4, 4]
    h = g.max_pool2d(g.relu(g.conv2d(h, 32, 3, padding=1)), 2)      # [N, 32, 2, 2]
    logits = g.mlp(g.flatten(h), [64, 10])                          # [N, 10]
    g.output("logits", logits)
    g.loss(g.softmax_cross_entropy(logits, g.input("label", ["N"], dtype="int64", doc="the digit, 0-9")))
    return g.build()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def run(client, *, epochs: int = 20, out: str | None = None) -> dict:
    """Train through the service, fetch the ONNX model and check it; returns what was measured."""
    import onnxruntime

    graph, (train, test) = cnn(), digits()
    job = client.submit(graph, train, eval_data=test, optimizer="adam", lr=0.005, batch_size=64, epochs=epochs,
                        eval_every=50)
    final = client.wait(job["id"], timeout=600)
    if final["state"] != "succeeded":
        raise SystemExit(f"job {job['id']} {final['state']}: {final.get('error')}")
    params = client.result(job["id"])["params"]
    logits = runtime.compile(graph).forward(test, params, with_grad=False).outputs["logits"]
    model = client.model_onnx(job["id"])
    if out:
        with open(out, "wb") as f:
            f.write(model)
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (served,) = session.run(["logits"], {"x": test["x"]})
    return {"job": job["id"], "steps": final["step"], "test_accuracy": accuracy(logits, test["label"]),
            "onnx_accuracy": accuracy(served, test["label"]),
            "same_predictions": bool((served.argmax(axis=1) == logits.argmax(axis=1)).all()),
            "max_logit_difference": float(np.abs(served - logits).max())}


def main(argv: list[str] | None = None) -> int:
    from service.client import DEFAULT_URL, Client

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CHAINRULE_URL", DEFAULT_URL))
    parser.add_argument("--api-key", default=os.environ.get("CHAINRULE_API_KEY"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="digits_cnn.onnx", help="where to write the ONNX model")
    args = parser.parse_args(argv)
    with Client(args.url, api_key=args.api_key, timeout=60) as client:
        report = run(client, epochs=args.epochs, out=args.out)
    print(f"job {report['job']}: {report['steps']} steps, test accuracy {report['test_accuracy']:.1%}; "
          f"onnxruntime on {args.out}: {report['onnx_accuracy']:.1%}, same predictions: {report['same_predictions']} "
          f"(largest logit difference {report['max_logit_difference']:.1e})")
    return 0 if report["same_predictions"] and report["test_accuracy"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
