"""The plain loop the GPU check compares the template with: the same model class and data
(fake 224x224), bf16 autocast, channels_last, torch.compile, cudnn autotuning. Prints the
training images per second of the last epoch (validation included, as in metrics.csv)."""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import model_dict  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--model", default="resnet50")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    n_val = args.size // 5
    x = torch.randn(args.size, 3, 224, 224).to(dev, memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.size,), device=dev)
    model = model_dict[args.model](in_channels=3, num_classes=10, image_size=224, dropout=0.1)
    model = model.to(dev, memory_format=torch.channels_last)
    net = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_n = args.size - n_val
    steps = train_n // args.batch
    for epoch in range(args.epochs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(train_n, device=dev)
        for i in range(steps):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for i in range(train_n, args.size, args.batch):
                net(x[i:i + args.batch]).argmax(1)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        print(f"plain epoch {epoch + 1}: {steps * args.batch / seconds:.1f} img/s ({seconds:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
