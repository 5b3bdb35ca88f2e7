"""The plain script a user would write by hand for the same work as `python train.py` on the
defaults: the same data, model class, optimizer, schedule and augmentation; it writes the
config, the weights and the curves. The baseline of bench.py's whole-process figure."""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model.small_cnn import SmallCNN  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"epochs": args.epochs, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "seed": 0}
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)

    import importlib.util  # the digits file that scikit-learn ships, read without importing sklearn (~1 s)
    sklearn_dir = Path(importlib.util.find_spec("sklearn").origin).parent
    raw = np.loadtxt(sklearn_dir / "datasets/data/digits.csv.gz", delimiter=",", dtype=np.float32)
    x = (torch.from_numpy(raw[:, :-1]).view(-1, 1, 8, 8) / 16 - 0.5) / 0.5
    y = torch.from_numpy(raw[:, -1]).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = perm[:359], perm[359:]

    # The template's defaults on this CPU: bf16 autocast (it has AVX512-BF16), channels_last,
    # label smoothing 0.1, one epoch of linear warmup then cosine.
    model = SmallCNN(1, 10, 8, dropout=0.1).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * (len(train) // 64)
    warm = min(steps - 1, len(train) // 64)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    history = []
    for epoch in range(args.epochs):
        t0 = time.time()
        model.train()
        order = train[torch.randperm(len(train))]
        for i in range(len(train) // 64):
            idx = order[i * 64:(i + 1) * 64]
            xb = F.pad(x[idx], (1, 1, 1, 1), value=-1.0)  # random shifts by up to one pixel
            dy, dx = torch.randint(0, 3, (2,)).tolist()
            xb = xb[:, :, dy:dy + 8, dx:dx + 8].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x[val]).float()
            val_loss = F.cross_entropy(logits, y[val]).item()
            val_acc = (logits.argmax(1) == y[val]).float().mean().item()
        history.append({"epoch": epoch + 1, "train_loss": loss.item(), "val_loss": val_loss, "val_acc": val_acc})
        print(f"epoch {epoch + 1} val_acc {val_acc:.4f} {time.time() - t0:.1f}s")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "metrics.json").write_text(json.dumps(history))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot([h["val_loss"] for h in history])
    axes[1].plot([h["val_acc"] for h in history])
    fig.savefig(out / "curves.png")


if __name__ == "__main__":
    main()
