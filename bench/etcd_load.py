#!/usr/bin/env python3
"""Closed-loop load generator for etcd's v3 gRPC API (used by bench/compare.sh).

Only dependency: grpcio. The two request messages it needs are encoded by hand
(protobuf wire format), so no generated stubs or etcd client library are needed:

  etcdserverpb.PutRequest   { bytes key = 1; bytes value = 2; }
  etcdserverpb.RangeRequest { bytes key = 1; ... bool serializable = 7; }

RangeRequest leaves `serializable` false, i.e. every get is a linearizable read
(etcd's default, a ReadIndex round through the leader).

Each of --clients logical clients runs a closed loop (send one request, wait for
the answer, send the next) over its own gRPC channel, i.e. its own TLS connection
(a local subchannel pool stops grpc from sharing one connection among channels);
channels are spread round-robin over the endpoints. The clients are spread over
--procs OS processes (each one asyncio loop) so that the Python side can use both
cores. Prints one JSON object with throughput, latency percentiles and the CPU
time that the generator itself used (user+sys of all its processes).
"""
import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import time

import grpc

PUT = "/etcdserverpb.KV/Put"
RANGE = "/etcdserverpb.KV/Range"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes_field(num: int, data: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def put_req(key: bytes, value: bytes) -> bytes:
    return _bytes_field(1, key) + _bytes_field(2, value)


def range_req(key: bytes) -> bytes:
    return _bytes_field(1, key)


def key_of(i: int) -> bytes:
    return b"bench/%08d" % i


def _ident(b):
    return b


def make_channel(args, endpoint):
    with open(args.cacert, "rb") as f:
        ca = f.read()
    cert = key = None
    if args.cert:
        with open(args.cert, "rb") as f:
            cert = f.read()
        with open(args.key, "rb") as f:
            key = f.read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    opts = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.ssl_target_name_override", "localhost"),
    ]
    return grpc.aio.secure_channel(endpoint, creds, options=opts)


async def _run_clients(args, client_ids, op, deadline_or_ops, preload_range=None):
    """Run the given logical clients. Returns (latencies_ns, errors, error_samples, elapsed)."""
    endpoints = args.endpoints.split(",")
    chans = [make_channel(args, endpoints[c % len(endpoints)]) for c in client_ids]
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 20) for ch in chans))
        calls = [
            (ch.unary_unary(PUT, request_serializer=_ident, response_deserializer=_ident),
             ch.unary_unary(RANGE, request_serializer=_ident, response_deserializer=_ident))
            for ch in chans
        ]
        value = b"v" * args.value_size
        lat = []
        errors = 0
        samples = []

        if preload_range is not None:
            # Write every key in preload_range once (shared work queue).
            keys = iter(preload_range)

            async def loader(put, _get):
                nonlocal errors
                for i in keys:
                    try:
                        await put(put_req(key_of(i), value), timeout=10)
                    except grpc.RpcError as e:  # pragma: no cover
                        errors += 1
                        if len(samples) < 5:
                            samples.append(str(e.code()))

            t0 = time.perf_counter()
            await asyncio.gather(*(loader(p, g) for p, g in calls))
            return lat, errors, samples, time.perf_counter() - t0

        rng = random.Random(args.seed + client_ids[0])
        deadline = deadline_or_ops

        async def client(put, get):
            nonlocal errors
            now = time.perf_counter
            while True:
                k = key_of(rng.randrange(args.keys))
                t = now()
                if t >= deadline:
                    return
                try:
                    if op == "put":
                        await put(put_req(k, value), timeout=10)
                    else:
                        resp = await get(range_req(k), timeout=10)
                        if len(resp) < args.value_size:  # key missing: no kv in the answer
                            raise ValueError("get returned no value")
                    lat.append(now() - t)
                except (grpc.RpcError, ValueError, asyncio.TimeoutError) as e:
                    errors += 1
                    if len(samples) < 5:
                        samples.append(repr(e)[:200])

        t0 = time.perf_counter()
        await asyncio.gather(*(client(p, g) for p, g in calls))
        return lat, errors, samples, time.perf_counter() - t0
    finally:
        await asyncio.gather(*(ch.close() for ch in chans), return_exceptions=True)


def _worker(args, client_ids, op, start_at, deadline, preload_range, q):
    try:
        if args.uvloop:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        # Start all processes' measurement windows at the same wall-clock instant.
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        if preload_range is None:
            # Convert shared wall-clock times to this process' perf_counter.
            off = time.perf_counter() - time.time()
            d = deadline + off
            # connections are made before start_at; wait until then
            async def main():
                endpoints = args.endpoints  # noqa: F841
                delay = start_at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                return await _run_clients(args, client_ids, op, d)
            lat, errors, samples, elapsed = asyncio.run(main())
        else:
            lat, errors, samples, elapsed = asyncio.run(
                _run_clients(args, client_ids, op, None, preload_range))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        q.put({"lat": lat, "errors": errors, "samples": samples, "elapsed": elapsed, "cpu": cpu})
    except Exception as e:  # report, don't hang the parent
        q.put({"fatal": repr(e)})


def _ticks(pids):
    """user+system clock ticks used so far by the given processes."""
    t = 0
    for pid in pids:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        t += int(fields[11]) + int(fields[12])
    return t


def pct(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def run_phase(args, op, clients, preload=False):
    procs = max(1, min(args.procs, clients))
    groups = [list(range(p, clients, procs)) for p in range(procs)]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    start_at = time.time() + 1.5  # time for every process to connect
    deadline = start_at + args.duration
    ps = []
    for p, ids in enumerate(groups):
        pre = None
        if preload:
            pre = range(p, args.keys, procs)
        ps.append(ctx.Process(target=_worker, args=(args, ids, op, start_at, deadline, pre, q)))
    for p in ps:
        p.start()
    server_cores = None
    if args.server_pids and not preload:
        pids = [int(x) for x in args.server_pids.split(",")]
        time.sleep(max(0.0, start_at - time.time()))
        t0, c0 = time.time(), _ticks(pids)
        time.sleep(max(0.0, deadline - time.time()))
        t1, c1 = time.time(), _ticks(pids)
        server_cores = (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    results = [q.get(timeout=args.duration + 120) for _ in ps]
    for p in ps:
        p.join()
    fatal = [r["fatal"] for r in results if "fatal" in r]
    if fatal:
        raise SystemExit("etcd_load: worker failed: %s" % fatal[0])
    lat = sorted(x for r in results for x in r["lat"])
    errors = sum(r["errors"] for r in results)
    samples = [s for r in results for s in r["samples"]][:5]
    elapsed = max(r["elapsed"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    us = lambda s: int(s * 1e6)
    return {
        "op": op,
        "clients": clients,
        "procs": procs,
        "ops": len(lat),
        "errors": errors,
        "error_samples": samples,
        "elapsed_s": elapsed,
        "ops_per_s": len(lat) / elapsed if elapsed > 0 else 0.0,
        "p50_us": us(pct(lat, 50)),
        "p95_us": us(pct(lat, 95)),
        "p99_us": us(pct(lat, 99)),
        "max_us": us(lat[-1]) if lat else 0,
        "gen_cpu_s": cpu,
        "gen_cpu_cores": cpu / elapsed if elapsed > 0 else 0.0,
        "server_cpu_cores": server_cores,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", required=True, help="host:port,host:port,...")
    ap.add_argument("--cacert", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--op", choices=["put", "get", "preload"], default="put")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of measurement")
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                    help="OS processes to spread the clients over")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--server-pids", help="pid,pid,...: report their CPU use during the measurement")
    ap.add_argument("--uvloop", action="store_true", help="run the asyncio loops on uvloop")
    args = ap.parse_args()
    if args.op == "preload":
        r = run_phase(args, "put", args.clients, preload=True)
    else:
        r = run_phase(args, args.op, args.clients)
    json.dump(r, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
