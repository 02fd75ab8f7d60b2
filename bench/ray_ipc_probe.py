"""Probe (GPU): two 0.5-GPU Ray actors on one GPU; CUDA IPC hand-off vs the object store for a 128 MB bf16 tensor.

  python3 bench/ray_ipc_probe.py   # on the lent GPU, Ray carried as wheels (docs/PERFORMANCE.md)

Measured on an H200 (2026-12-04): IPC rebuild 0.24 s (first call, sets up IPC), object store 0.48 s end to end.
"""

import os
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
import ray  # noqa: E402
import torch  # noqa: E402


@ray.remote(num_gpus=0.5)
class Producer:
    def __init__(self):
        self.t = torch.randn(64 * 1024 * 1024, device="cuda", dtype=torch.bfloat16)  # 128 MB

    def handles(self):
        from torch.multiprocessing.reductions import reduce_tensor

        torch.cuda.synchronize()
        return reduce_tensor(self.t)

    def cpu(self):
        return self.t.cpu()

    def checksum(self):
        return float(self.t.float().sum())


@ray.remote(num_gpus=0.5)
class Consumer:
    def take(self, handle):
        rebuild, args = handle
        args = list(args)
        args[6] = torch.cuda.current_device()  # the device index as this process numbers it
        t0 = time.perf_counter()
        checksum = float(rebuild(*args).float().sum())
        torch.cuda.synchronize()
        return checksum, time.perf_counter() - t0

    def take_cpu(self, x):
        t0 = time.perf_counter()
        x.to("cuda")
        torch.cuda.synchronize()
        return time.perf_counter() - t0


def main() -> None:
    ray.init(num_gpus=1, num_cpus=8, include_dashboard=False, logging_level="WARNING")
    producer, consumer = Producer.remote(), Consumer.remote()
    got, seconds = ray.get(consumer.take.remote(ray.get(producer.handles.remote())))
    print("ipc checksum", got, "expected", ray.get(producer.checksum.remote()), f"rebuild {seconds:.3f} s")
    t0 = time.perf_counter()
    h2d = ray.get(consumer.take_cpu.remote(producer.cpu.remote()))
    print(f"object store 128 MB: {time.perf_counter() - t0:.3f} s end to end (host-to-device {h2d:.3f} s)")


if __name__ == "__main__":
    main()
