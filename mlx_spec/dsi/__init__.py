"""DSI: distributed speculative inference (speculation parallelism, arXiv 2405.14105).

orchestrator.py  the scheduling, transport-free (tests drive it with fake workers)
verifier.py      a worker's job: sync its KV cache, verify a chain, accept (mlx_spec.accept)
transport.py     token-block messages over mx.distributed, with failure detection
worker.py        the worker process loop
launch.py        spawning local workers / joining mlx.launch ranks
decoder.py       method `dsi` with the engine's Decoder face
simulator.py     the cost model: expected time per token of non-SI, SI and DSI
"""
