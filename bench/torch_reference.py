"""PyTorch baseline for offshoot's throughput benchmarks.

Trains Hugging Face transformers' GPTNeoXForCausalLM of the given shape (transformers' default
attention implementation) with fused AdamW and gradient clipping on synthetic tokens, in one of three
modes: f32 eager, bf16 autocast (eager), or bf16 autocast under torch.compile; prints one JSON line:
tokens/s over the timed steps, and the GPU's busy time per step (its kernels' summed time in two
profiled steps after them). Eager PyTorch launches every kernel from the host, so on a slow host its
step outlasts that busy time by a wide margin; the pair tells a host-bound figure from a GPU-bound
one. Same shape, batch and optimiser as bench/train-throughput, so the figures compare.
"""
import argparse
import json
import sys
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM


def gpu_busy_ms(step, sync, steps: int = 2) -> float | None:
    """The GPU's busy time per step: its kernels' and copies' summed durations over `steps` profiled steps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            sync()
        # record_function ranges (the optimiser's step) show on the device timeline too: spans, not work.
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
        us = sum(e.device_time_total for e in kernels)
    except Exception as e:  # the profiler is optional here: the throughput figure stands without it
        print(f"torch_reference: no GPU busy time ({e})", file=sys.stderr)
        return None
    return us / 1000 / steps if us > 0 else None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--hidden", type=int, required=True)
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    # Warm-up steps go on until this much time has passed too, as offshoot's side does (bench/train-throughput.ts).
    p.add_argument("--warmup-seconds", type=float, default=2.0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--mode", default="f32", choices=["f32", "bf16", "bf16-compile"])
    a = p.parse_args()

    device = torch.device(a.device if a.device != "cuda" or torch.cuda.is_available() else "cpu")
    config = GPTNeoXConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
        intermediate_size=4 * a.hidden, rotary_pct=0.25, max_position_embeddings=max(2048, a.seq_len),
        use_parallel_residual=True, tie_word_embeddings=False, hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).to(device)
    model.train()
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    n = a.batch_size * a.seq_len
    ids = torch.randint(0, a.vocab, (a.batch_size, a.seq_len), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.mode != "f32")
    forward = torch.compile(model) if a.mode == "bf16-compile" else model

    def step() -> torch.Tensor:
        with autocast:
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    warm_start = time.perf_counter()
    done = 0
    while done < a.warmup or time.perf_counter() - warm_start < a.warmup_seconds:
        step().item()
        done += 1
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    final = loss.item()
    sync()
    ms = (time.perf_counter() - t0) * 1000 / a.steps
    gpu_ms = gpu_busy_ms(step, sync) if device.type == "cuda" else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    attn = getattr(model.config, "_attn_implementation", "default")
    print(json.dumps({
        "tokensPerSecond": n * 1000 / ms,
        "stepMs": ms,
        "detail": f"torch {torch.__version__} {a.mode}{' fused AdamW' if fused else ''} on {name}, attention {attn}",
        "gpuMs": gpu_ms,
        "peakGpuMiB": (torch.cuda.max_memory_allocated(device) // 2**20) if device.type == "cuda" else None,
        "loss": final,
    }))


if __name__ == "__main__":
    main()
