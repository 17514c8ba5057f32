"""Driver for tests/cluster/test_runtime_env_submit.py, run by `ray job submit` with
cluster/runtime_env.yaml: starts lcray's driver runtime the way recipes/*.py do (bootstrap, then
lcray.runtime.init_ray joining the cluster via RAY_ADDRESS) and reports what a Ray worker
of the job sees."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.getcwd(), "recipes"))  # cwd = the job's working_dir (the repo)
from _bootstrap import bootstrap  # noqa: E402

bootstrap()

import ray  # noqa: E402

from lcray.config import load_config  # noqa: E402
from lcray.runtime import init_ray  # noqa: E402

init_ray(load_config(None))


@ray.remote(num_cpus=0)
def probe() -> dict:
    import lcray

    keys = ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "VLLM_ENABLE_V1_MULTIPROCESSING", "TORCH_EXTENSIONS_DIR")
    return {
        "env": {k: os.environ.get(k) for k in keys},
        "cwd": os.getcwd(),
        "lcray": os.path.dirname(lcray.__file__),
        "has_recipes": os.path.isfile(os.path.join(os.getcwd(), "recipes", "solopo.py")),
    }


print("PROBE " + json.dumps(ray.get(probe.remote())), flush=True)
