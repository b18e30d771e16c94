"""Publish one reno event from Python with the plain NATS client (nats-py) and a CBOR codec (cbor2).

    python examples/python/publish.py --nkey-seed .local/secrets/publisher.nk \
        --type plan_changed --member m1 --payload '{"plan": "premium"}'

A backend service signs in to the hub as the `publisher` user (an nkey: the hub's config holds only
its public key), which may publish events and receive the stream's acks on its own inbox prefix
`_INBOX_publisher`, nothing else.

Exits 0 once JetStream has stored the event; exits 1 with the server's reason when it was refused
(for example an event type that is not in the registry). See docs/protocol.md.
"""

import argparse
import asyncio
import json
import sys
import time
import uuid

import cbor2
import nats
from nats.js.errors import APIError, NoStreamResponseError


async def publish(url, nkey_seed, event_type, member, payload, event_id, targets, collapse_key):
    envelope = {
        "id": event_id,
        "type": event_type,
        "member": member,
        "occurred_at_ms": int(time.time() * 1000),
        "payload": payload,
    }
    if targets:
        envelope["targets"] = targets
    if collapse_key:
        envelope["collapse_key"] = collapse_key
    options = {}
    if nkey_seed:
        # The publisher user may receive replies only under its own inbox prefix.
        options = {"nkeys_seed": nkey_seed, "inbox_prefix": b"_INBOX_publisher"}
    connection = await nats.connect(url, **options)
    try:
        jetstream = connection.jetstream()
        # Nats-Msg-Id is the event id scoped by type and member: a retry within two minutes is
        # stored only once, and an event of another type or member with the same id is not lost.
        ack = await jetstream.publish(
            f"reno.evt.{event_type}.{member}",
            cbor2.dumps(envelope),
            headers={"Nats-Msg-Id": f"{event_type}:{member}:{event_id}"},
        )
        return ack
    finally:
        await connection.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--nkey-seed", default=None, help="file with the publisher user's nkey seed")
    parser.add_argument("--type", required=True)
    parser.add_argument("--member", required=True)
    parser.add_argument("--payload", default="null", help="JSON, sent as CBOR")
    parser.add_argument("--id", default=None, help="event id; default: a new UUID")
    parser.add_argument("--target", action="append", default=[], help="device type; repeatable")
    parser.add_argument("--collapse-key", default=None)
    args = parser.parse_args()
    event_id = args.id or str(uuid.uuid4())
    try:
        ack = asyncio.run(
            publish(
                args.url,
                args.nkey_seed,
                args.type,
                args.member,
                json.loads(args.payload),
                event_id,
                args.target,
                args.collapse_key,
            )
        )
    except NoStreamResponseError:
        print(f"refused: no stream captures reno.evt.{args.type}.{args.member} (unknown event type?)", file=sys.stderr)
        sys.exit(1)
    except APIError as error:
        print(f"refused by the server: {error.description} (code {error.err_code})", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"id": event_id, "stream": ack.stream, "sequence": ack.seq, "duplicate": bool(ack.duplicate)}))


if __name__ == "__main__":
    main()
