"""Load time of the embedded model from its safetensors cache versus building it from GGUF.

The first load converts the GGUF file and fills the cache; later loads read the cache
(target: under 2 s). Prints both times and their ratio.

    .venv/bin/python benchmarks/load_time.py
"""

import os
import tempfile
import time

from workbench.models import load_model


def main(rounds: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("WORKBENCH_CACHE")
        os.environ["WORKBENCH_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            load_model("smollm2-135m")  # empty cache: GGUF -> clean LlamaForCausalLM -> safetensors
            t_first = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(rounds):
                load_model("smollm2-135m")
            t_cached = (time.perf_counter() - t0) / rounds
        finally:
            if old is None:
                os.environ.pop("WORKBENCH_CACHE")
            else:
                os.environ["WORKBENCH_CACHE"] = old
    print(f"first load (GGUF -> cache) : {t_first:6.2f} s")
    print(f"cached load (mean of {rounds})   : {t_cached:6.2f} s (target < 2 s)")
    print(f"ratio first/cached         : {t_first / t_cached:6.1f}")


if __name__ == "__main__":
    main()
