"""PyTorch's loss curve under offshoot's training recipe, from an offshoot checkpoint and batches.

Loads the checkpoint (a GPT-NeoX folder transformers reads) as GPTNeoXForCausalLM and trains it on the
given batches with the recipe of core/model/recipe.ts: torch.optim.AdamW (betas 0.9/0.95, eps 1e-8,
decoupled weight decay on matrices only, not biases or LayerNorm), gradients clipped to a global L2
norm, linear warmup then cosine decay to a tenth of the peak (core/model/optim.ts learningRate). The
loss is the mean cross-entropy of the logits against the batches' own targets. Prints one JSON line:
the loss of every step, before its update.

The oracle of test/parity.test.ts's training case (f32, CPU) and of the cuda backend's on-card curve
check, which also runs it in bf16 autocast to see how far PyTorch's own mixed precision moves the curve.

  python bench/torch_training_curve.py --model DIR --batches FILE.safetensors --lr 1e-3 --warmup 20 \
      [--weight-decay 0.1] [--grad-clip 1] [--min-lr-divisor 10] [--mode f32|bf16] [--device cpu|cuda]

FILE holds int32 tensors `input` and `target`, each [steps, batch, seqLen].
"""
import argparse
import json
import math

import torch
from safetensors.torch import load_file
from transformers import GPTNeoXForCausalLM


def learning_rate(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    if warmup > 0 and step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def decays(name: str, p: torch.Tensor) -> bool:
    return p.ndim >= 2 and "layernorm" not in name and "layer_norm" not in name


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--min-lr-divisor", type=float, default=10.0)
    p.add_argument("--mode", default="f32", choices=["f32", "bf16"])
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    device = torch.device(a.device)
    # Exact f32 products, as offshoot's f32 mode (no TF32 on the card).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = GPTNeoXForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).to(device)
    model.train()
    batches = load_file(a.batches)
    inputs, targets = batches["input"].long().to(device), batches["target"].long().to(device)
    steps = inputs.shape[0]
    named = list(model.named_parameters())
    groups = [
        {"params": [t for n, t in named if decays(n, t)], "weight_decay": a.weight_decay},
        {"params": [t for n, t in named if not decays(n, t)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.mode == "bf16")
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, a.lr, a.lr / a.min_lr_divisor, min(a.warmup, steps), steps)
        with autocast:
            logits = model(input_ids=inputs[step]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets[step].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    print(json.dumps({"mode": a.mode, "device": str(device), "torch": torch.__version__, "losses": losses}))


if __name__ == "__main__":
    main()
