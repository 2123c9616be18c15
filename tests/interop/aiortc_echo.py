#!/usr/bin/env python3
"""aiortc (a WebRTC stack this project did not write) as the far end of a data channel.

The answering side of tests/tests/chromium_turns.rs: it runs in the test's peer network
namespace and never talks to the TURN server itself. Protocol on stdin/stdout, one JSON
object per line:
  stdin:  {"type": "offer", "sdp": "..."}   the browser's offer (ICE gathering complete)
  stdout: {"type": "answer", "sdp": "..."}  our answer, host candidates only
Every message that arrives on a data channel is sent straight back on it (echo). The
script ends when stdin closes (the test is done) or after --timeout seconds, and then
prints one line {"done": {...}} with how many messages it echoed, and the ICE pair
aiortc had nominated when the first message arrived.

Exit status 0 after a clean end, 1 on the time limit, 2 on a usage error.
"""

import argparse
import asyncio
import json
import sys

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout", type=float, default=60.0, help="overall limit in seconds")
    return p.parse_args()


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def nominated_pair(pc: RTCPeerConnection):
    """The ICE pair aioice nominated (private attributes: informational only)."""
    ice = pc.sctp.transport.transport if pc.sctp else None
    nominated = getattr(getattr(ice, "_connection", None), "_nominated", {})
    for p in nominated.values():
        return {
            "local": [p.local_candidate.host, p.local_candidate.port],
            "remote": [p.remote_candidate.host, p.remote_candidate.port],
            "remote_type": p.remote_candidate.type,
        }
    return None


async def stdin_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, sys.stdin)
    return reader


async def run() -> dict:
    stdin = await stdin_reader()
    # No ICE servers: the peer offers host candidates on its own namespace's address,
    # reachable from the relay's peer-side address only.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    echoed = {"messages": 0, "bytes": 0, "channels": []}
    seen = {"pair": None}

    @pc.on("datachannel")
    def on_datachannel(channel) -> None:
        echoed["channels"].append(channel.label)

        @channel.on("message")
        def on_message(message) -> None:
            echoed["messages"] += 1
            if seen["pair"] is None:
                seen["pair"] = nominated_pair(pc)
            echoed["bytes"] += len(message)
            channel.send(message)

    line = await stdin.readline()
    if not line:
        raise SystemExit("stdin closed before the offer")
    offer = json.loads(line)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
    await pc.setLocalDescription(await pc.createAnswer())
    emit({"type": pc.localDescription.type, "sdp": pc.localDescription.sdp})

    # The test closes stdin when the browser has reported.
    while await stdin.readline():
        pass

    pair = seen["pair"] or nominated_pair(pc)
    await pc.close()
    return {"echoed": echoed, "pair": pair}


def main() -> int:
    args = parse_args()
    try:
        done = asyncio.run(asyncio.wait_for(run(), args.timeout))
    except asyncio.TimeoutError:
        emit({"error": f"time limit of {args.timeout} s reached"})
        return 1
    emit({"done": done})
    return 0


if __name__ == "__main__":
    sys.exit(main())
