"""Peak memory of one encoder pass (the plugin's packed encoder and projector) by audio
length, at the real model's size: what vLLM's start-up profile charges for its dummy clip.

    python -m loadtest.encoder_memory --seconds 10 30 60 120 [--dtype bfloat16]

Each length runs in a fresh process (random weights of the real shape, no autograd as in
the engine) and reports its resident high-water mark above the model's own, and its time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

from loadtest.servers import peak_rss_gib


def _encode(seconds: float, dtype_name: str) -> dict[str, float]:
    import os

    import torch
    from transformers import AutoConfig
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.models.granite_speech import (
        GraniteSpeechCTCEncoder,
        GraniteSpeechEncoderProjector,
    )

    from granite_speech_server.audio.features import audio_token_count
    from granite_speech_server.vllm_plugin.encoder import encode_audios
    from tools.full_size_model import CONFIG

    dtype = getattr(torch, dtype_name)
    torch.set_default_dtype(dtype)
    config = AutoConfig.for_model(**{k: v for k, v in CONFIG.items()
                                     if k not in ("architectures", "torch_dtype")})
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method="tcp://127.0.0.1:0")
        initialize_model_parallel(1, 1)
        encoder = GraniteSpeechCTCEncoder(config.encoder_config, prefix="encoder").eval()
        projector = GraniteSpeechEncoderProjector(config, None, prefix="projector").eval()
    for module in [*encoder.modules(), *projector.modules()]:
        if getattr(module, "quant_method", None) is not None:
            module.quant_method.process_weights_after_loading(module)
    frames = int(seconds * 50)
    features = [torch.randn(frames, 160)]
    before = peak_rss_gib(os.getpid())
    started = time.perf_counter()
    embeds = encode_audios(encoder, projector, features,
                           [audio_token_count(int(seconds * 16000))])
    return {"seconds": seconds, "tokens": embeds[0].shape[0],
            "peak_above_model_gib": round(peak_rss_gib(os.getpid()) - before, 3),
            "encode_s": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 30, 60, 120])
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    for seconds in args.seconds:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            print(json.dumps(pool.apply(_encode, (seconds, args.dtype))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
