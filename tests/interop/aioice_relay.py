#!/usr/bin/env python3
"""aioice (an ICE stack this project did not write) relays through tern.

Two aioice connections on this machine:
  * "relay-only" gathers nothing but a relay candidate from the TURN server
    (TransportPolicy.RELAY where the installed aioice has it);
  * "loopback" gathers a host candidate on 127.0.0.1 and its own relay candidate.
They exchange candidates in-process, run ICE, and send numbered messages both ways. The
relay-only side can only reach the other through the TURN server, so every message it
sends or receives crosses the relay.

Only loopback is touched: host candidates are limited to 127.0.0.1 (aioice would
otherwise gather every interface address), and no STUN server is used.

Exit status 0 when every message arrived intact in both directions, 1 otherwise, 2 on a
usage error. Prints one JSON line with what happened.
"""

import argparse
import asyncio
import json
import sys

import aioice
import aioice.ice


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True, help="TURN server HOST:PORT (UDP)")
    p.add_argument("--relay-username", required=True, help="TURN username of the relay-only side")
    p.add_argument("--relay-password", required=True)
    p.add_argument("--other-username", required=True, help="TURN username of the loopback side")
    p.add_argument("--other-password", required=True)
    p.add_argument("--count", type=int, default=20, help="messages each way")
    p.add_argument("--timeout", type=float, default=30.0, help="overall limit in seconds")
    return p.parse_args()


def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list:
    return ["127.0.0.1"] if use_ipv4 else []


async def run(args: argparse.Namespace) -> dict:
    host, _, port = args.server.rpartition(":")
    server = (host.strip("[]"), int(port))
    aioice.ice.get_host_addresses = loopback_only  # never gather non-loopback addresses

    relay_kwargs = {}
    has_policy = hasattr(aioice, "TransportPolicy")
    if has_policy:
        relay_kwargs["transport_policy"] = aioice.TransportPolicy.RELAY
    relay_only = aioice.Connection(
        ice_controlling=True,
        components=1,
        turn_server=server,
        turn_username=args.relay_username,
        turn_password=args.relay_password,
        turn_transport="udp",
        use_ipv6=False,
        **relay_kwargs,
    )
    other = aioice.Connection(
        ice_controlling=False,
        components=1,
        turn_server=server,
        turn_username=args.other_username,
        turn_password=args.other_password,
        turn_transport="udp",
        use_ipv6=False,
    )
    result = {"transport_policy": has_policy}
    try:
        await asyncio.gather(relay_only.gather_candidates(), other.gather_candidates())
        relay_cands = relay_only.local_candidates
        if not has_policy:
            # Without TransportPolicy, offer only the relay candidate to make the path
            # go through the relay all the same.
            relay_cands = [c for c in relay_cands if c.type == "relay"]
        result["relay_only_candidates"] = [f"{c.type} {c.host}:{c.port}" for c in relay_cands]
        result["other_candidates"] = [f"{c.type} {c.host}:{c.port}" for c in other.local_candidates]
        if not relay_cands or any(c.type != "relay" for c in relay_cands):
            result["error"] = "relay-only side has no relay candidate, or has others"
            return result
        if not any(c.type == "relay" for c in other.local_candidates):
            result["error"] = "loopback side got no relay candidate"
            return result

        for cand in relay_cands:
            await other.add_remote_candidate(cand)
        await other.add_remote_candidate(None)
        for cand in other.local_candidates:
            await relay_only.add_remote_candidate(cand)
        await relay_only.add_remote_candidate(None)
        relay_only.remote_username = other.local_username
        relay_only.remote_password = other.local_password
        other.remote_username = relay_only.local_username
        other.remote_password = relay_only.local_password

        await asyncio.gather(relay_only.connect(), other.connect())
        pair = relay_only._nominated.get(1)  # noqa: SLF001 - for the report only
        if pair is not None:
            result["nominated"] = repr(pair)
            result["nominated_local_type"] = pair.local_candidate.type

        sent = received_other = received_relay = 0
        for i in range(args.count):
            out = f"relay-only->other #{i}".encode()
            await relay_only.send(out)
            sent += 1
            got = await asyncio.wait_for(other.recv(), 5)
            if got != out:
                result["error"] = f"message {i} to the other side: {got!r} != {out!r}"
                return result
            received_other += 1
            back = f"other->relay-only #{i}".encode()
            await other.send(back)
            got = await asyncio.wait_for(relay_only.recv(), 5)
            if got != back:
                result["error"] = f"message {i} to the relay-only side: {got!r} != {back!r}"
                return result
            received_relay += 1
        result.update(sent=sent, received_other=received_other, received_relay=received_relay)
        result["ok"] = pair is None or pair.local_candidate.type == "relay"
        if not result["ok"]:
            result["error"] = "the nominated pair does not use the relay candidate"
        return result
    finally:
        await asyncio.gather(relay_only.close(), other.close(), return_exceptions=True)


def main() -> int:
    args = parse_args()
    try:
        result = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        result = {"error": f"timed out after {args.timeout} s"}
    except Exception as e:  # report anything aioice raises, then fail
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
