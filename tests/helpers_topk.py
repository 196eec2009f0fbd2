"""A briefly trained top-k MoE checkpoint on real Fashion-MNIST images (for corruption, fixed-expert and
routing tests)."""
from __future__ import annotations

from pathlib import Path

import torch

from helpers_data import write_fmnist_subset
from robustmoe_bench.checkpoint import save_checkpoint
from robustmoe_bench.data import as_tensors, load_dataset
from robustmoe_bench.models import create_model


#: threads of the helper's training (this machine's 2 cores)
TRAIN_THREADS = 2


def train_topk(folder: Path, moe: str = "conv", k: int = 2, experts: int = 3, steps: int = 120,
               n_train: int = 1000, n_test: int = 200, seed: int = 0) -> dict[str, Path]:
    """Write ``n_train``/``n_test`` real Fashion-MNIST images under ``folder/data`` and a resnet-tiny
    ``moe`` model trained with Adam (cross-entropy, ``steps`` batches of 64) to ``folder/model.safetensors``."""
    data = Path(folder) / "data"
    data.mkdir(parents=True, exist_ok=True)
    root = write_fmnist_subset(data, n_train, n_test)
    xtr, ytr = as_tensors(load_dataset("fashion-mnist", "train", root=root))
    # a fixed thread count: the trained weights (and the accuracy the tests assert) must not depend on the
    # thread count an earlier test or OMP_NUM_THREADS left behind (1 and 2 threads train different models)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return _train(folder, root, xtr, ytr, moe, k, experts, steps, n_train, seed)
    finally:
        torch.set_num_threads(threads)


def _train(folder: Path, root: Path, xtr: torch.Tensor, ytr: torch.Tensor, moe: str, k: int, experts: int,
           steps: int, n_train: int, seed: int) -> dict[str, Path]:
    torch.manual_seed(seed)
    model = create_model("resnet-tiny", "moe", moe=moe, experts=experts, k=k, dataset="fashion-mnist")
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n_train, (64,))
        loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # batch-norm statistics of the final weights (the running averages lag behind a short fast run)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = 1.0  # the running statistics become those of one pass over the training images
    with torch.no_grad():
        model(xtr)
    for m in bns:
        m.momentum = 0.1
    ckpt = Path(folder) / "model.safetensors"
    save_checkpoint(ckpt, model.eval(), training={"method": "test-ce", "steps": steps})
    return {"root": root, "ckpt": ckpt}
