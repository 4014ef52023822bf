"""DSI: distributed speculative inference (speculation parallelism, arXiv 2405.14105).

orchestrator.py  the scheduling, transport-free (tests drive it with fake workers)
drafting.py      the drafter beside the scheduler (its own thread), one step at a time
verifier.py      a worker's job: sync its KV cache, verify a chain, accept (mlx_spec.accept)
ring.py          addressed packets over the ring backend, relayed by the ranks in between
transport.py     token-block jobs and replies over ring.py, with failure detection
worker.py        the worker process loop
launch.py        spawning local workers / joining the ranks mlx.launch started
decoder.py       method `dsi` with the engine's Decoder face
simulator.py     the cost model: expected time per token of non-SI, SI and DSI
measure.py       the simulator's inputs measured on real models
__main__.py      `python -m mlx_spec.dsi` under mlx.launch, across machines

One machine:    mlxspec generate --method dsi --workers 2 [--draft-model D | -o drafter=pld]
Many machines:  mlx.launch --backend ring --hostfile hosts.json -- python -m mlx_spec.dsi --model M
Planning:       mlxspec dsi-sim --target-ms 30 --drafter-ms 3 --acceptance 0.8 --workers 2
"""
