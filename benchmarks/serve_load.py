"""A bounded load test of `mcq serve` (issue 26): localhost only, a fixed number of requests, stops
by itself.

    PYTHONPATH=. python benchmarks/serve_load.py --bundle /tmp/mcq-serve/smollm2.mcq [--tokens 128]

1. one streaming client, then 8 at once (same server run, one asyncio loop of httpx streams):
   aggregate decode tokens/s (first token to last) and with the prefill (wall time), time to
   first token;
2. 200 requests from 8 workers, a fixed-seed mix of good ones (chat and completions, streamed or
   not, greedy or seeded sampling: each text compared with what `runtime.load(bundle)` gives in
   this process for the same request), streams the client drops after a few events, requests
   whose client gives up waiting, and bad ones (malformed JSON, unknown model, bad values, prompts
   past the context: each must be a 4xx JSON error);
3. the server's resident memory after a warm-up (a throughput run and 40 mixed requests of another
   seed) against after everything, /health showing no request left, and the server process gone
   after SIGTERM.

Every contender sets OMP_WAIT_POLICY=passive (the benchmark's rule on a shared 2-core machine)."""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "Explain how a lighthouse keeper spent a winter night.",
    "Write three short tips for keeping bread fresh.",
    "What makes a good bicycle lock?",
    "Describe the sound of rain on a tin roof.",
    "List the steps to repot a small plant.",
    "Why do cats knock things off tables?",
    "Summarize the plot of a story about a lost map.",
    "Give me a short recipe for tomato soup.",
    "How do tides work, in two sentences?",
    "Write a haiku about an old train station.",
    "What should I pack for a day hike?",
    "Tell me a fact about octopuses.",
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_server(bundle: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_WAIT_POLICY": "passive", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mcq.cli", "serve", bundle, "--port", "0", "--model-name", "m",
                             "--max-batch", str(max_batch), "--max-queue", "64", "--log-level", "warning"],
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"the server exited ({proc.wait()})")
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, found.group(1)


def stream(http: httpx.Client, url: str, body: dict[str, Any], drop_after: int | None = None) -> dict[str, Any]:
    """A streamed request: text, event times, finish reason (drop_after: close after that many events)."""
    t0 = time.perf_counter()
    times, parts, finish = [], [], None
    with http.stream("POST", url, json={**body, "stream": True}) as r:
        if r.status_code != 200:
            r.read()
            return {"status": r.status_code, "body": r.json()}
        lines = r.iter_lines()
        for line in lines:
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return {"status": 200, "error": event["error"]}
            choice = event["choices"][0] if event["choices"] else {}
            piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
            if piece:
                parts.append(piece)
                times.append(time.perf_counter() - t0)
            finish = choice.get("finish_reason") or finish
            if drop_after is not None and len(times) >= drop_after:
                return {"status": 200, "dropped": True}
    return {"status": 200, "text": "".join(parts), "times": times, "finish": finish, "start": t0}


async def _stream_async(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    times = []
    async with http.stream("POST", url, json={**body, "stream": True}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    times.append(time.perf_counter() - t0)
    return {"start": t0, "times": times}


def throughput(url: str, clients: int, tokens: int) -> dict[str, float]:
    """`clients` streaming chat requests at once, from one asyncio loop (a light load generator:
    the server and it share the machine's cores)."""
    import asyncio

    body = {"model": "m", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}

    async def run() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
            return await asyncio.gather(*(_stream_async(
                http, url + "/chat/completions",
                {**body, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]})
                for i in range(clients)))

    t0 = time.perf_counter()
    results = asyncio.run(run())
    ends = [r["start"] + r["times"][-1] for r in results]
    firsts = [r["start"] + r["times"][0] for r in results]
    wall = max(ends) - t0
    ttft = [r["times"][0] for r in results]
    # tokens: the server's count (pieces can join several tokens; every request ran `tokens` steps).
    # decode tokens/s: the tokens after each first one, over the time from the first first token to
    # the last token (prompts that arrive together are prefilled together, then decode together)
    return {"clients": clients, "tokens": clients * tokens, "wall_s": wall, "tok_s": clients * tokens / wall,
            "decode_tok_s": clients * (tokens - 1) / (max(ends) - min(firsts)),
            "ttft_p50_ms": 1000 * statistics.median(ttft), "ttft_max_ms": 1000 * max(ttft),
            "per_client_tok_s": statistics.median((tokens - 1) / (r["times"][-1] - r["times"][0]) for r in results)}


def idle(url: str) -> dict[str, Any]:
    """/health once no request runs or waits (then a second for the server to settle)."""
    deadline = time.monotonic() + 30
    while True:
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
        if (health["active"] == 0 and health["queued"] == 0) or time.monotonic() > deadline:
            time.sleep(1.0)
            return health
        time.sleep(0.1)


def bad_requests(context: int) -> list[tuple[str, bytes | dict[str, Any]]]:
    msgs = [{"role": "user", "content": "hi"}]
    return [
        ("/chat/completions", b"{not json"),
        ("/chat/completions", b"\xff\xfe\x00"),
        ("/chat/completions", {"model": "gpt-4o", "messages": msgs}),
        ("/chat/completions", {"model": "m", "messages": []}),
        ("/chat/completions", {"model": "m", "messages": msgs, "temperature": 7}),
        ("/chat/completions", {"model": "m", "messages": msgs, "n": 3}),
        ("/chat/completions", {"model": "m", "messages": msgs, "max_tokens": 0}),
        ("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "word " * context}]}),
        ("/completions", {"model": "m", "prompt": [10**9]}),
        ("/completions", {"model": "m", "prompt": "x", "max_tokens": context * 2}),
        ("/completions", {"model": "m", "prompt": "x", "stop": ["a"] * 9}),
        ("/chat/completions", [1, 2, 3]),
    ]


def mixed(url: str, model: Any, count: int, workers: int, seed: int, context: int) -> dict[str, Any]:
    rng = random.Random(seed)
    expected: dict[tuple, str] = {}
    plan = []
    bad = bad_requests(context)
    # exact shares, in a seeded order: 15 % bad, 10 % dropped streams, 5 % clients giving up
    kinds = ["bad"] * (count * 15 // 100) + ["drop"] * (count // 10) + ["give-up"] * (count // 20)
    kinds += ["good"] * (count - len(kinds))
    rng.shuffle(kinds)
    for i, kind_of in enumerate(kinds):
        prompt = rng.choice(PROMPTS)
        n = rng.choice([8, 16, 32])
        sample = rng.random() < 0.3
        settings = {"temperature": 0.8, "top_p": 0.95, "seed": rng.randrange(1000)} if sample else {"temperature": 0}
        if kind_of == "bad":
            plan.append(("bad", bad[i % len(bad)]))
        elif kind_of == "drop":
            plan.append(("drop", prompt, rng.randrange(1, 4)))
        elif kind_of == "give-up":
            plan.append(("give-up", prompt))
        else:
            kind = "chat" if rng.random() < 0.6 else "completion"
            streamed = rng.random() < 0.5
            plan.append(("good", kind, prompt, n, streamed, tuple(sorted(settings.items()))))
    print(f"computing the expected texts in this process for {sum(p[0] == 'good' for p in plan)} good requests ...",
          file=sys.stderr)
    for p in plan:
        if p[0] != "good":
            continue
        _, kind, prompt, n, _, settings = p
        key = (kind, prompt, n, settings)
        if key in expected:
            continue
        s = dict(settings)
        sampling = {"do_sample": s["temperature"] > 0, "temperature": s["temperature"] or 1.0,
                    "top_p": s.get("top_p", 1.0), "seed": s.get("seed", 0)}
        if kind == "chat":
            expected[key] = model.chat([{"role": "user", "content": prompt}], max_new_tokens=n, **sampling)
        else:
            expected[key] = model.generate(prompt, max_new_tokens=n, **sampling)

    def run(p: tuple) -> tuple[str, bool, str]:
        with httpx.Client(timeout=120) as http:
            if p[0] == "bad":
                path, body = p[1]
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                r = http.post(url + path, content=content, headers={"content-type": "application/json"})
                ok = 400 <= r.status_code < 500 and set(r.json().get("error", {})) >= {"message", "type"}
                return "bad", ok, f"{r.status_code}"
            if p[0] == "drop":
                body = {"model": "m", "messages": [{"role": "user", "content": p[1]}], "max_tokens": 64,
                        "temperature": 0, "ignore_eos": True}
                got = stream(http, url + "/chat/completions", body, drop_after=p[2])
                return "drop", got.get("dropped", False) or "text" in got, ""
            if p[0] == "give-up":
                body = {"model": "m", "prompt": p[1], "max_tokens": 200, "temperature": 0, "ignore_eos": True}
                try:
                    http.post(url + "/completions", json=body, timeout=0.3)
                except httpx.TimeoutException:
                    return "give-up", True, ""
                return "give-up", True, "finished first"
            _, kind, prompt, n, streamed, settings = p
            body = {"model": "m", "max_tokens": n, **dict(settings)}
            path = "/chat/completions" if kind == "chat" else "/completions"
            body.update({"messages": [{"role": "user", "content": prompt}]} if kind == "chat" else {"prompt": prompt})
            if streamed:
                got = stream(http, url + path, body)
                text = got.get("text")
            else:
                r = http.post(url + path, json=body)
                choice = r.json()["choices"][0] if r.status_code == 200 else {}
                text = choice.get("message", {}).get("content") if kind == "chat" else choice.get("text")
            want = expected[(kind, prompt, n, settings)]
            return "good", text == want, "" if text == want else f"{text!r} != {want!r}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(run, plan))
    summary: dict[str, Any] = {"wall_s": time.perf_counter() - t0}
    for kind in ("good", "bad", "drop", "give-up"):
        mine = [r for r in results if r[0] == kind]
        summary[kind] = {"count": len(mine), "ok": sum(r[1] for r in mine),
                         "failures": [r[2] for r in mine if not r[1]][:5]}
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per request in the throughput runs")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--passes", type=int, default=3, help="throughput passes (the median pass is reported)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    os.environ["OMP_WAIT_POLICY"] = "passive"
    import runtime
    from runtime.server import context_length

    model = runtime.load(args.bundle)
    context = context_length(model)
    proc, url = start_server(args.bundle, args.clients)
    out: dict[str, Any] = {"bundle": args.bundle, "engine": type(model).__name__}
    try:
        # warm-up: every batch size once, and every kind of request (completions, sampling, errors,
        # disconnects) before the baseline: first uses load code and fill caches that then stay
        throughput(url, args.clients, 16)
        mixed(url, model, 40, args.clients, args.seed + 1, context)
        idle(url)
        out["rss_warm_mib"] = rss_kib(proc.pid) / 1024
        passes = []  # 1 client then 8, back to back: each pass's ratio is measured on the same minute
        for _ in range(args.passes):
            passes.append((throughput(url, 1, args.tokens), throughput(url, args.clients, args.tokens)))
        ratios = [many["decode_tok_s"] / single["decode_tok_s"] for single, many in passes]
        middle = sorted(range(len(passes)), key=lambda i: ratios[i])[len(passes) // 2]
        single, many = passes[middle]
        out["passes"] = [{"single": a, "many": b} for a, b in passes]
        out["ratios"], out["ratio"] = ratios, ratios[middle]
        out["ratio_wall"] = many["tok_s"] / single["tok_s"]
        print(f"\n{args.passes} passes; the median pass by ratio:")
        print("\n| clients | tokens | wall s | tokens/s (wall, with prefill) | decode tokens/s (aggregate) | "
              "per-client decode tok/s | TTFT p50 ms | TTFT max ms |\n|---|---|---|---|---|---|---|---|")
        for r in (single, many):
            print(f"| {r['clients']} | {r['tokens']} | {r['wall_s']:.2f} | {r['tok_s']:.1f} | "
                  f"{r['decode_tok_s']:.1f} | {r['per_client_tok_s']:.1f} | {r['ttft_p50_ms']:.0f} | "
                  f"{r['ttft_max_ms']:.0f} |")
        print(f"\naggregate decode tokens/s, {args.clients} clients / 1 client: {out['ratio']:.2f}x (target >= 3x); "
              f"with prefill (wall): {out['ratio_wall']:.2f}x; every pass: "
              + ", ".join(f"{r:.2f}x" for r in ratios))
        out["mixed"] = mixed(url, model, args.requests, args.clients, args.seed, context)
        out["health_after"] = health = idle(url)
        out["rss_after_mib"] = rss_kib(proc.pid) / 1024
        m = out["mixed"]
        print(f"\n{args.requests} mixed requests from {args.clients} workers in {m['wall_s']:.1f} s:")
        for kind in ("good", "bad", "drop", "give-up"):
            print(f"  {kind:8s} {m[kind]['ok']}/{m[kind]['count']} as expected {m[kind]['failures'] or ''}")
        print(f"  /health after: {health}")
        growth = out["rss_after_mib"] / out["rss_warm_mib"] - 1
        out["rss_growth"] = growth
        print(f"  server RSS: warm {out['rss_warm_mib']:.0f} MiB, after {out['rss_after_mib']:.0f} MiB "
              f"({100 * growth:+.1f} %; target within 10 %)")
    finally:
        proc.terminate()
        try:
            out["exit_code"] = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out["exit_code"] = "killed after 30 s"
    left = subprocess.run(["pgrep", "-f", f"mcq.cli serve {args.bundle}"], capture_output=True, text=True).stdout
    out["left_running"] = left.split()
    print(f"  server exit after SIGTERM: {out['exit_code']}; processes left: {out['left_running'] or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
