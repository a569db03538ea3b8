"""Writes the ONNX import fixtures (tests/fixtures/onnx/): small models exported by PyTorch's
``torch.onnx.export``, each with an input and PyTorch's output for it, so the import tests need
no torch. Re-run after changing a model here (needs the bench extra: torch):

    python scripts/onnx_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "onnx"


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.LeakyReLU(0.1), nn.Linear(8, 2))

    def forward(self, x):
        return torch.softmax(self.net(x), dim=-1)


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 1)

    def forward(self, tokens):
        return self.fc(self.norm(self.embed(tokens)).mean(dim=1))


def export(name: str, model: nn.Module, example: np.ndarray, input_name: str) -> None:
    torch.manual_seed(0)
    model.eval()
    tensor = torch.from_numpy(example)
    torch.onnx.export(model, (tensor,), str(OUT / f"{name}.onnx"), input_names=[input_name], output_names=["out"],
                      dynamic_axes={input_name: {0: "N"}, "out": {0: "N"}}, opset_version=18, dynamo=False)
    with torch.no_grad():
        np.savez(OUT / f"{name}.npz", **{input_name: example, "expected": model(tensor).numpy()})


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    export("small_cnn", SmallCNN(), rng.normal(size=(2, 1, 8, 8)).astype(np.float32), "x")
    torch.manual_seed(1)
    export("mlp", MLP(), rng.normal(size=(3, 5)).astype(np.float32), "x")
    torch.manual_seed(2)
    export("embedder", Embedder(), rng.integers(0, 10, size=(4, 7)).astype(np.int64), "tokens")
    print(f"wrote the fixtures to {OUT}")


if __name__ == "__main__":
    main()
