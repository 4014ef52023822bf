"""Methods through `mlxspec serve` against the in-process API, on the built-in bench prompts.

Starts the server in this process (port chosen by the system), then for every prompt and method
(interleaved, after a warm-up) times one non-streamed HTTP request from a client thread's point of
view, and the same generation through mlx_spec.stream_generate with a kept decoder. Reports
tokens/s through the server, the speedup over `ar` through the same server, and the server's
overhead per request (HTTP wall time minus in-process wall time).

    python examples/server_bench.py --methods ar,pld,lookahead,draft,redrafter --max-tokens 128
"""
import argparse
import http.client
import json
import statistics
import threading
import time

import mlx_spec
from mlx_spec.bench.prompts import builtin_prompts
from mlx_spec.server import Defaults, Server, make_http_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--methods", default="ar,pld,lookahead,draft,redrafter")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    methods = args.methods.split(",")
    model = mlx_spec.load(args.model)
    server = Server(model, Defaults(method=methods[0], max_tokens=args.max_tokens))
    httpd = make_http_server(server, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    decoders = {m: mlx_spec.make_decoder(model, m) for m in methods}
    prompts = builtin_prompts()

    def over_http(method, prompt, max_tokens):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", json.dumps(
            {"prompt": prompt, "max_tokens": max_tokens, "method": method}))
        reply = json.loads(conn.getresponse().read())
        elapsed = time.perf_counter() - t0
        conn.close()
        return elapsed, reply["usage"]["completion_tokens"], reply["choices"][0]["text"]

    def in_process(method, prompt, max_tokens):
        t0 = time.perf_counter()
        result = mlx_spec.api.collect(mlx_spec.stream_generate(
            model, prompt, max_tokens=max_tokens, raw=True, decoder=decoders[method]))
        return time.perf_counter() - t0, result.stats.generated_tokens, result.text

    for method in methods:  # warm-up
        over_http(method, prompts[0]["prompt"], 16)
        in_process(method, prompts[0]["prompt"], 16)
    rows = {m: {"http_s": 0.0, "api_s": 0.0, "tokens": 0, "overhead": [], "same": True}
            for m in methods}
    for i, p in enumerate(prompts):
        for method in methods[i % len(methods):] + methods[:i % len(methods)]:
            # alternate which path goes first: lookahead's trie (shared per loaded model) and
            # caches favour whichever runs second
            if i % 2 == 0:
                h_s, h_n, h_text = over_http(method, p["prompt"], args.max_tokens)
                a_s, a_n, a_text = in_process(method, p["prompt"], args.max_tokens)
            else:
                a_s, a_n, a_text = in_process(method, p["prompt"], args.max_tokens)
                h_s, h_n, h_text = over_http(method, p["prompt"], args.max_tokens)
            row = rows[method]
            row["http_s"] += h_s
            row["api_s"] += a_s
            row["tokens"] += h_n
            row["overhead"].append(h_s - a_s)
            row["same"] &= h_text == a_text
    ar = rows[methods[0]]["tokens"] / rows[methods[0]]["http_s"]
    print(f"{len(prompts)} prompts, {args.max_tokens} tokens, model {server.model_id}")
    print("method | tok/s via server | speedup via server | tok/s in process | "
          "server overhead per request: median ms, % of the in-process time | same text")
    for m, row in rows.items():
        speed = row["tokens"] / row["http_s"]
        print(f"{m} | {speed:.1f} | {speed / ar:.2f}x | {row['tokens'] / row['api_s']:.1f} | "
              f"{1000 * statistics.median(row['overhead']):+.1f} ms, "
              f"{100 * (row['http_s'] - row['api_s']) / row['api_s']:+.1f}% | {row['same']}")
    httpd.shutdown()
    server.close()


if __name__ == "__main__":
    main()
