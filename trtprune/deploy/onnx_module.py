"""An exported ONNX model behind ``nn.Module``'s call: what a user's ``metric(model)`` scores the delivered model with.

A task's metric is written for the torch model (``model(images)`` gives its outputs); the report scores the
delivered ONNX model with the same metric, so the file runs in ONNX Runtime behind the same call. The static batch
of the export is met by splitting larger batches and padding the last one; the outputs come back as torch tensors in
the structure the torch model returns (``structure``: a pytree spec from :func:`structure_of`), or as one tensor /
a tuple in the ONNX outputs' order without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.latency.ort import image_dtype, ort_session


def structure_of(model: nn.Module, input_shape: tuple[int, ...]):
    """The pytree spec of what ``model`` returns for one input of ``input_shape``."""
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, *input_shape))
    return pytree.tree_flatten(out)[1]


class OnnxModule(nn.Module):
    """Runs ``path`` with ONNX Runtime (CPU, ``threads``) when called on a float32 NCHW batch."""

    def __init__(self, path: str | Path, structure=None, threads: int = 2):
        super().__init__()
        self.path, self.structure = Path(path), structure
        self.session = ort_session(self.path, threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or not all(isinstance(d, int) for d in inputs[0].shape):
            raise TrtpruneError(
                f"'{path}' takes {len(inputs)} input(s) of shape {[i.shape for i in inputs]}, not one static batch",
                fix="score the ONNX export of a model with one image input (trtprune export --model ...)",
            )
        self.input, self.batch = inputs[0], inputs[0].shape[0]
        self.dtype = image_dtype(self.input, self.path)
        # nothing to train; a parameter so that next(model.parameters()).device works in the user's metric
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, x: torch.Tensor):
        x = torch.as_tensor(x).float().cpu()
        if tuple(x.shape[1:]) != tuple(self.input.shape[1:]):
            raise TrtpruneError(
                f"'{self.path}' takes inputs of shape {list(self.input.shape)}, called on {list(x.shape)}",
                fix="call it on batches of the images the model was exported for",
            )
        parts = []
        for start in range(0, len(x), self.batch):
            xb = x[start : start + self.batch].numpy().astype(self.dtype, copy=False)
            n = len(xb)
            if n < self.batch:
                xb = np.concatenate([xb, np.zeros((self.batch - n, *xb.shape[1:]), self.dtype)])
            parts.append([o[:n] for o in self.session.run(None, {self.input.name: np.ascontiguousarray(xb)})])
        flat = [torch.from_numpy(np.concatenate([p[i] for p in parts])) for i in range(len(parts[0]))]
        if self.structure is not None:
            return pytree.tree_unflatten(flat, self.structure)
        return flat[0] if len(flat) == 1 else tuple(flat)
