#!/usr/bin/env python3
"""matrix-nio drives a Ganglion homeserver through one two-user conversation.

Usage: scenario.py <homeserver base URL>, e.g. http://127.0.0.1:18008

Every assertion reads what nio's own sync machinery made of the server's
responses (MatrixRoom objects, invited rooms, event and account-data
callbacks, parsed SyncResponse objects, its device calls), not raw HTTP,
but where nio has no call (search, the user directory, password change).
Encryption stays off: the Rust scenario covers it.

Steps 1-2 set up the room every later step needs, so a failure there stops the
run; steps 3-14 each run even if an earlier one failed, and the exit status is 1
with a list of every failed step.
"""

import asyncio
import json
import secrets
import struct
import sys
import time
import zlib
from urllib.parse import quote

from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    DownloadError,
    RoomMemberEvent,
    RoomMessageImage,
    RoomMessageText,
    ThumbnailError,
    UploadResponse,
    SyncError,
    SyncResponse,
    UnknownAccountDataEvent,
)
from nio.api import ReceiptType, ResizingMethod

WAIT_S = 10.0  # deadline for any one condition to appear in a client's state
OVERALL_S = 60.0  # deadline for the whole scenario
SYNC_TIMEOUT_MS = 5000  # long-poll timeout the sync loops ask the server for


class ScenarioFailed(Exception):
    """An assertion about what a client sees did not hold."""


def say(message: str) -> None:
    print(f"[nio] {message}", flush=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ScenarioFailed(message)


def ok(response, what: str):
    """Return an SDK response, or fail with the server's error if it is one."""
    if isinstance(response, ErrorResponse):
        raise ScenarioFailed(
            f"{what} failed: {response.status_code} {response.message!r}"
        )
    return response


def client_config() -> AsyncClientConfig:
    # No encryption; give up on an unreachable server instead of retrying forever.
    return AsyncClientConfig(
        encryption_enabled=False,
        store_sync_tokens=False,
        max_timeouts=2,
        max_limit_exceeded=3,
    )


class Peer:
    """One user: a logged-in nio client whose sync loop runs in the background."""

    def __init__(self, homeserver: str, user_id: str, password: str):
        self.user_id = user_id
        self.password = password
        self.client = AsyncClient(homeserver, user_id, config=client_config())
        self.synced = asyncio.Condition()
        self.sync_errors: list[str] = []
        self.messages: list[tuple[str, str, str]] = []  # (room, event id, body)
        self.images: list[tuple[str, str, str]] = []  # (room, event id, mxc url)
        self.member_events: list[tuple[str, str, str]] = []  # (room, user, membership)
        self.global_account_data: dict[str, dict] = {}
        self.left_rooms: set[str] = set()
        self.sync_task: asyncio.Task | None = None

        self.client.add_response_callback(self._on_sync, SyncResponse)
        self.client.add_response_callback(self._on_sync_error, SyncError)
        self.client.add_event_callback(self._on_message, RoomMessageText)
        self.client.add_event_callback(self._on_image, RoomMessageImage)
        self.client.add_event_callback(self._on_member, RoomMemberEvent)
        self.client.add_global_account_data_callback(
            self._on_global_account_data, UnknownAccountDataEvent
        )

    async def _on_sync(self, response: SyncResponse) -> None:
        # nio 0.26 parses rooms.leave but does not apply it to client.rooms;
        # the parsed response is the SDK's only view of a left room.
        self.left_rooms.update(response.rooms.leave.keys())
        async with self.synced:
            self.synced.notify_all()

    async def _on_sync_error(self, response: SyncError) -> None:
        self.sync_errors.append(f"{response.status_code} {response.message}")
        async with self.synced:
            self.synced.notify_all()

    def _on_message(self, room, event: RoomMessageText) -> None:
        self.messages.append((room.room_id, event.event_id, event.body))

    def _on_image(self, room, event: RoomMessageImage) -> None:
        self.images.append((room.room_id, event.event_id, event.url))

    def _on_member(self, room, event: RoomMemberEvent) -> None:
        self.member_events.append((room.room_id, event.state_key, event.membership))

    def _on_global_account_data(self, event: UnknownAccountDataEvent) -> None:
        self.global_account_data[event.type] = event.content

    async def login(self) -> None:
        response = ok(await self.client.login(self.password, "nio-scenario"), "login")
        check(response.user_id == self.user_id, f"login returned {response.user_id}")
        whoami = ok(await self.client.whoami(), "whoami")
        check(whoami.user_id == self.user_id, f"whoami says {whoami.user_id}")

    def start_syncing(self) -> None:
        self.sync_task = asyncio.create_task(
            self.client.sync_forever(timeout=SYNC_TIMEOUT_MS, full_state=True)
        )

    async def wait_for(self, predicate, what: str):
        """Wait until predicate() is truthy after one of this client's syncs."""
        deadline = time.monotonic() + WAIT_S
        while True:
            value = predicate()
            if value:
                return value
            if self.sync_errors:
                raise ScenarioFailed(
                    f"{self.user_id}'s sync failed while waiting for {what}: "
                    f"{self.sync_errors[-1]}"
                )
            if self.sync_task is not None and self.sync_task.done():
                raise ScenarioFailed(
                    f"{self.user_id}'s sync loop stopped: {self.sync_task.exception()!r}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ScenarioFailed(f"{self.user_id}: timed out waiting for {what}")
            async with self.synced:
                try:
                    await asyncio.wait_for(self.synced.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    def room(self, room_id: str):
        return self.client.rooms.get(room_id)

    async def raw(self, method: str, path: str, body: dict | None = None) -> dict:
        """A request nio has no method for, sent through the client's own session."""
        status, answer = await self.raw_status(method, path, body)
        check(status == 200, f"{method} {path} -> {status} {answer}")
        return answer

    async def raw_status(self, method: str, path: str, body: dict | None = None):
        """Like raw(), answering (status, JSON body) whatever the status."""
        response = await self.client.send(
            method,
            "/_matrix/client/v3" + path,
            json.dumps(body) if body is not None else None,
            headers={
                "Authorization": f"Bearer {self.client.access_token}",
                "Content-Type": "application/json",
            },
        )
        return response.status, json.loads(await response.text())

    def password_auth(self, session: str) -> dict:
        return {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self.user_id},
            "password": self.password,
            "session": session,
        }

    async def close(self) -> None:
        if self.sync_task is not None:
            self.sync_task.cancel()
            try:
                await self.sync_task
            except (asyncio.CancelledError, Exception):
                pass
        await self.client.close()


async def register(homeserver: str, localpart: str, password: str) -> str:
    """Register through user-interactive auth, the way nio's token flow does."""
    client = AsyncClient(homeserver, config=client_config())
    try:
        # First call carries no auth stage: the server answers 401 with flows
        # and a session.
        challenge = ok(
            await client.register_interactive(
                localpart, password, {"initial_device_display_name": "nio-scenario"}
            ),
            "register (UIA challenge)",
        )
        check(
            ["m.login.dummy"] == challenge.stages,
            f"expected a flow with the single stage m.login.dummy, got {challenge.stages}",
        )
        check(bool(challenge.session), "UIA challenge carries no session")
        # Second call completes the dummy stage within that session.
        response = ok(
            await client.register(localpart, password, "nio-scenario", challenge.session),
            "register (m.login.dummy)",
        )
        check(response.user_id.startswith(f"@{localpart}:"), f"registered {response.user_id}")
        check(bool(response.access_token), "registration returned no access token")
        return response.user_id
    finally:
        await client.close()


async def setup(homeserver: str) -> tuple[Peer, Peer, str]:
    suffix = secrets.token_hex(4)
    password = "correct horse " + suffix

    say("step 1: register alice and bob (UIA with m.login.dummy), then log in with m.login.password")
    alice_id = await register(homeserver, f"alice-{suffix}", password)
    bob_id = await register(homeserver, f"bob-{suffix}", password)
    say(f"  registered {alice_id} and {bob_id}")
    alice = Peer(homeserver, alice_id, password)
    bob = Peer(homeserver, bob_id, password)
    await alice.login()
    await bob.login()
    say(f"  both logged in (alice device {alice.client.device_id}, bob device {bob.client.device_id})")
    alice.start_syncing()
    bob.start_syncing()
    await alice.wait_for(lambda: alice.client.next_batch, "a first sync")
    await bob.wait_for(lambda: bob.client.next_batch, "a first sync")
    say("  both sync loops are running")

    say("step 2: alice creates a named room with a topic and invites bob; bob joins")
    name, topic = f"Ganglion nio {suffix}", "SDK scenario topic"
    created = ok(await alice.client.room_create(name=name, topic=topic), "createRoom")
    room_id = created.room_id
    say(f"  created {room_id}")
    ok(await alice.client.room_invite(room_id, bob_id), "invite")
    invited = await bob.wait_for(
        lambda: bob.client.invited_rooms.get(room_id), "the invite in bob's invited rooms"
    )
    check(invited.inviter == alice_id, f"invite shows inviter {invited.inviter}")
    check(invited.name == name, f"invite shows room name {invited.name!r}")
    say(f"  bob's client lists the invite from {invited.inviter} to {invited.name!r}")
    ok(await bob.client.join(room_id), "join")

    def both_joined(peer: Peer) -> bool:
        room = peer.room(room_id)
        return bool(
            room
            and room_id not in peer.client.invited_rooms
            and all(
                user in room.users and not room.users[user].invited
                for user in (alice_id, bob_id)
            )
        )

    for peer in (alice, bob):
        await peer.wait_for(lambda: both_joined(peer), "alice and bob both joined")
        room = peer.room(room_id)
        check(room.name == name, f"{peer.user_id} sees name {room.name!r}")
        check(room.topic == topic, f"{peer.user_id} sees topic {room.topic!r}")
        check(room.joined_count == 2, f"{peer.user_id} sees {room.joined_count} joined")
        say(f"  {peer.user_id} sees both joined, name {room.name!r}, topic {room.topic!r}")
    return alice, bob, room_id


async def poll_until(fetch, found, what: str):
    """Calls `fetch()` until `found(answer)` holds; fails with the last
    answer once WAIT_S has passed."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = await fetch()
        if found(answer):
            return answer
        check(time.monotonic() < deadline, f"{what} found {answer}")
        await asyncio.sleep(0.2)


async def send_text(peer: Peer, room_id: str, body: str) -> str:
    content = {"msgtype": "m.text", "body": body}
    response = ok(await peer.client.room_send(room_id, "m.room.message", content), "send")
    return response.event_id


async def step_messages(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 3: alice sends two text messages; bob's timeline callbacks receive them")
    bodies = ["hello bob", "second message"]
    event_ids = [await send_text(alice, room_id, body) for body in bodies]

    def received():
        seen = [(e, b) for (r, e, b) in bob.messages if r == room_id]
        return seen if seen[-2:] == list(zip(event_ids, bodies)) else None

    await bob.wait_for(received, "both messages in bob's timeline callbacks")
    state["last_event"] = event_ids[-1]
    say(f"  bob received {bodies} in order ({', '.join(event_ids)})")


def png(width: int, height: int) -> bytes:
    """An RGB PNG of a colour gradient, made without an imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x % 256, y % 256, 90))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    check(data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG")
    return struct.unpack(">II", data[16:24])


async def step_media(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step: alice uploads a picture and sends it as m.image; bob downloads it and its thumbnail")
    picture = png(400, 200)
    uploaded, _ = await alice.client.upload(
        lambda _status, _filenames: picture,
        content_type="image/png",
        filename="gradient.png",
        filesize=len(picture),
    )
    check(isinstance(uploaded, UploadResponse), f"upload failed: {uploaded}")
    mxc = uploaded.content_uri
    check(mxc.startswith("mxc://"), f"upload returned {mxc!r}")
    content = {
        "msgtype": "m.image",
        "body": "gradient.png",
        "url": mxc,
        "info": {"mimetype": "image/png", "size": len(picture), "w": 400, "h": 200},
    }
    sent = ok(
        await alice.client.room_send(room_id, "m.room.message", content),
        "send m.image",
    )
    url = await bob.wait_for(
        lambda: next((u for (r, e, u) in bob.images if r == room_id and e == sent.event_id), None),
        "the m.image in bob's timeline callbacks",
    )
    check(url == mxc, f"bob's image event names {url!r}, not {mxc!r}")
    downloaded = await bob.client.download(mxc=mxc)
    check(not isinstance(downloaded, DownloadError), f"download failed: {downloaded}")
    check(downloaded.body == picture, "the downloaded bytes differ from the upload")
    check(downloaded.content_type == "image/png", f"downloaded as {downloaded.content_type}")
    check(downloaded.filename == "gradient.png", f"downloaded as file {downloaded.filename!r}")
    server_name, media_id = mxc[len("mxc://"):].split("/", 1)
    thumbnail = await bob.client.thumbnail(server_name, media_id, 96, 96, ResizingMethod.crop)
    check(not isinstance(thumbnail, ThumbnailError), f"thumbnail failed: {thumbnail}")
    check(thumbnail.content_type == "image/png", f"thumbnail is {thumbnail.content_type}")
    check(png_size(thumbnail.body) == (96, 96), f"thumbnail is {png_size(thumbnail.body)}")
    say(f"  bob downloaded {len(downloaded.body)} bytes of {mxc} and a 96x96 thumbnail")


async def step_typing(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 4: alice types (timeout 30 s), then stops; bob's room typing users follow")
    ok(await alice.client.room_typing(room_id, True, 30_000), "typing on")
    await bob.wait_for(
        lambda: alice.user_id in bob.room(room_id).typing_users, "alice in typing users"
    )
    say(f"  bob sees typing users {bob.room(room_id).typing_users}")
    ok(await alice.client.room_typing(room_id, False), "typing off")
    await bob.wait_for(lambda: bob.room(room_id).typing_users == [], "no typing users")
    say("  bob sees typing users []")


def receipt_of(peer: Peer, room_id: str, user_id: str):
    """The user's main-timeline read receipt as peer's room holds it.

    nio sends thread_id "main" by default and files receipts that carry a
    thread_id under threaded_read_receipts; unthreaded ones under read_receipts.
    """
    room = peer.room(room_id)
    threaded = room.threaded_read_receipts.get(user_id, {}).get("main")
    return threaded or room.read_receipts.get(user_id)


def last_event(state: dict) -> str:
    check("last_event" in state, "no message from step 3 to refer to")
    return state["last_event"]


async def step_receipt(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 5: bob sends an m.read receipt for alice's last message; alice's client sees it")
    event_id = last_event(state)
    ok(await bob.client.update_receipt_marker(room_id, event_id, ReceiptType.read), "receipt")
    def bobs_receipt():
        receipt = receipt_of(alice, room_id, bob.user_id)
        return receipt if receipt and receipt.event_id == event_id else None

    receipt = await alice.wait_for(bobs_receipt, f"bob's receipt on {event_id}")
    check(receipt.receipt_type == "m.read", f"receipt type {receipt.receipt_type}")
    check(receipt.timestamp > 0, f"receipt timestamp {receipt.timestamp}")
    say(f"  alice sees bob's m.read on {receipt.event_id} (thread {receipt.thread_id})")


async def step_read_markers(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 6: bob sets m.fully_read with read_markers; his room account data shows it")
    event_id = last_event(state)
    ok(await bob.client.room_read_markers(room_id, event_id), "read_markers")
    await bob.wait_for(
        lambda: bob.room(room_id).fully_read_marker == event_id, "m.fully_read in bob's room"
    )
    say(f"  bob's room fully_read_marker is {event_id}")


async def step_account_data(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 7: global account data and a room tag round-trip through alice's sync")
    # nio 0.26 has no setter for global account data or tags: raw requests
    # through the client's own session, results read from its sync.
    user = quote(alice.user_id, safe="")
    room = quote(room_id, safe="")
    kind = "org.ganglion.sdk_scenario"
    content = {"colour": "green", "nonce": secrets.token_hex(4)}
    await alice.raw("PUT", f"/user/{user}/account_data/{kind}", content)
    await alice.wait_for(
        lambda: alice.global_account_data.get(kind) == content, f"global {kind} in sync"
    )
    say(f"  alice's global account data callback got {kind} = {content}")

    await alice.raw("PUT", f"/user/{user}/rooms/{room}/tags/m.favourite", {"order": 0.5})
    await alice.wait_for(
        lambda: alice.room(room_id).tags.get("m.favourite") == {"order": 0.5},
        "m.favourite (order 0.5) in alice's room tags",
    )
    say(f"  alice's room tags are {alice.room(room_id).tags}")
    await alice.raw("DELETE", f"/user/{user}/rooms/{room}/tags/m.favourite")
    await alice.wait_for(
        lambda: "m.favourite" not in alice.room(room_id).tags, "m.favourite removed"
    )
    say(f"  after deleting it alice's room tags are {alice.room(room_id).tags}")


async def step_unread(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 8: a message bob has not read counts as a notification until his receipt")
    event_id = await send_text(alice, room_id, "are you there?")
    await bob.wait_for(
        lambda: any(e == event_id for (_, e, _) in bob.messages)
        and bob.room(room_id).unread_notifications > 0,
        "the new message and a notification count > 0",
    )
    say(f"  bob's room unread_notifications = {bob.room(room_id).unread_notifications}")
    ok(await bob.client.update_receipt_marker(room_id, event_id, ReceiptType.read), "receipt")
    await bob.wait_for(
        lambda: bob.room(room_id).unread_notifications == 0, "notification count 0"
    )
    say("  after bob's receipt unread_notifications = 0")


async def step_gapped_sync(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step: bob is away while alice renames the room, changes its topic and sends 30 messages")
    if bob.sync_task is not None:
        bob.sync_task.cancel()
        await asyncio.gather(bob.sync_task, return_exceptions=True)
        bob.sync_task = None
    ok(
        await alice.client.room_put_state(room_id, "m.room.topic", {"topic": "changed while away"}),
        "topic",
    )
    ok(await alice.client.room_put_state(room_id, "m.room.name", {"name": "Renamed"}), "name")
    for i in range(30):
        ok(
            await alice.client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": f"away {i}"}
            ),
            "send",
        )
    response = ok(
        await bob.client.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 10}}}),
        "the gapped sync",
    )
    joined = response.rooms.join.get(room_id)
    check(joined is not None, "the room is in the gapped sync")
    check(joined.timeline.limited, "the timeline is limited")
    room = bob.client.rooms[room_id]
    check(room.topic == "changed while away", f"bob's room topic is {room.topic!r}")
    check(room.name == "Renamed", f"bob's room name is {room.name!r}")
    check(
        alice.user_id in room.users and bob.user_id in room.users,
        f"bob's room members: {sorted(room.users)}",
    )
    say(f"  bob's room after the gap: name {room.name!r}, topic {room.topic!r}, limited timeline")
    bob.start_syncing()


async def step_leave(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 14: bob leaves; alice sees his membership leave, bob's sync lists the room as left")
    ok(await bob.client.room_leave(room_id), "leave")
    await alice.wait_for(
        lambda: (room_id, bob.user_id, "leave") in alice.member_events
        and bob.user_id not in alice.room(room_id).users,
        "bob's leave in alice's room",
    )
    say(f"  alice got bob's m.room.member leave; members now {list(alice.room(room_id).users)}")
    await bob.wait_for(lambda: room_id in bob.left_rooms, "the room under rooms.leave")
    say("  bob's sync response lists the room under rooms.leave")


async def step_devices(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 10: alice logs in a second device, renames it, deletes it with her password (UIA)")
    second = Peer(alice.client.homeserver, alice.user_id, alice.password)
    try:
        await second.login()
        second_id = second.client.device_id
        listed = ok(await alice.client.devices(), "devices")
        ids = [device.id for device in listed.devices]
        check(second_id in ids and alice.client.device_id in ids, f"devices {ids}")
        ok(
            await alice.client.update_device(second_id, {"display_name": "nio second"}),
            "update_device",
        )
        renamed = ok(await alice.client.devices(), "devices")
        names = {device.id: device.display_name for device in renamed.devices}
        check(names.get(second_id) == "nio second", f"device names {names}")
        # Without auth nio gets the UIA challenge; with the password it deletes.
        challenge = await alice.client.delete_devices([second_id])
        session = getattr(challenge, "session", None)
        check(bool(session), f"delete_devices without auth: {challenge!r}")
        ok(
            await alice.client.delete_devices([second_id], alice.password_auth(session)),
            "delete_devices with the password",
        )
        after = ok(await alice.client.devices(), "devices")
        check(second_id not in [d.id for d in after.devices], "the deleted device is still listed")
        whoami = await second.client.whoami()
        check(isinstance(whoami, ErrorResponse), f"the deleted device's token still works: {whoami!r}")
        say(f"  listed {len(ids)} devices, renamed and deleted {second_id}; its token is refused")
    finally:
        await second.close()


async def step_search(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 11: bob finds alice's message by a word of it (server-side search)")
    word = "needle" + secrets.token_hex(3)
    body = f"a {word} in the haystack"
    await send_text(alice, room_id, body)
    async def fetch():
        answer = await bob.raw(
            "POST", "/search", {"search_categories": {"room_events": {"search_term": word}}}
        )
        results = answer["search_categories"]["room_events"]["results"]
        return [r["result"]["content"].get("body") for r in results]

    bodies = await poll_until(fetch, lambda bodies: body in bodies, f"search for {word}")
    say(f"  bob's search for {word} found {len(bodies)} result(s)")


async def step_directory(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 12: alice finds bob in the user directory by his display name")
    name = "Bob " + secrets.token_hex(3)
    ok(await bob.client.set_displayname(name), "set_displayname")
    answer = await poll_until(
        lambda: alice.raw("POST", "/user_directory/search", {"search_term": name.split(" ")[1]}),
        lambda answer: any(r["user_id"] == bob.user_id for r in answer["results"]),
        "directory search",
    )
    hit = next(r for r in answer["results"] if r["user_id"] == bob.user_id)
    check(hit.get("display_name") == name, f"directory shows {hit}")
    say(f"  found {bob.user_id} as {name!r} (limited {answer['limited']})")


async def step_password(alice: Peer, bob: Peer, room_id: str, state: dict) -> None:
    say("step 13: bob changes his password (UIA); the old one stops working, the new one logs in")
    new_password = bob.password + " changed"
    request = {"new_password": new_password, "logout_devices": True}
    status, challenge = await bob.raw_status("POST", "/account/password", request)
    check(status == 401 and challenge.get("session"), f"no UIA challenge: {status} {challenge}")
    await bob.raw(
        "POST", "/account/password", {**request, "auth": bob.password_auth(challenge["session"])}
    )
    probe = AsyncClient(bob.client.homeserver, bob.user_id, config=client_config())
    try:
        refused = await probe.login(bob.password, "nio-probe")
        check(isinstance(refused, ErrorResponse), "the old password still logs in")
        check(refused.status_code == "M_FORBIDDEN", f"old password: {refused.status_code}")
        ok(await probe.login(new_password, "nio-probe"), "login with the new password")
    finally:
        await probe.close()
    ok(await bob.client.whoami(), "whoami on the device that changed it")
    bob.password = new_password
    say("  the old password is refused with M_FORBIDDEN, the new one logs in, this device stays")


async def main(homeserver: str) -> int:
    started = time.monotonic()
    say(f"homeserver {homeserver}")
    alice = bob = None
    failures: list[str] = []
    try:
        try:
            alice, bob, room_id = await setup(homeserver)
        except Exception as failure:  # noqa: BLE001 - any failure here ends the run
            kind = "" if isinstance(failure, ScenarioFailed) else f"{type(failure).__name__}: "
            say(f"FAILED during setup: {kind}{failure}")
            return 1
        state: dict = {}
        for step in (
            step_messages,
            step_typing,
            step_receipt,
            step_read_markers,
            step_account_data,
            step_unread,
            step_gapped_sync,
            step_media,
            step_devices,
            step_search,
            step_directory,
            step_password,
            step_leave,
        ):
            try:
                await step(alice, bob, room_id, state)
            except Exception as failure:  # noqa: BLE001 - record it, run the next step
                kind = "" if isinstance(failure, ScenarioFailed) else f"{type(failure).__name__}: "
                failures.append(f"{step.__name__}: {kind}{failure}")
                say(f"  FAILED: {kind}{failure}")
    finally:
        for peer in (alice, bob):
            if peer is not None:
                await peer.close()
    elapsed = time.monotonic() - started
    if failures:
        say(f"{len(failures)} step(s) failed in {elapsed:.1f} s:")
        for failure in failures:
            say(f"  - {failure}")
        return 1
    say(f"all steps passed in {elapsed:.1f} s")
    return 0


async def run(homeserver: str) -> int:
    try:
        async with asyncio.timeout(OVERALL_S):
            return await main(homeserver)
    except TimeoutError:
        say(f"FAILED: the scenario did not finish within {OVERALL_S:.0f} s")
        return 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: scenario.py <homeserver base URL>", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(run(sys.argv[1].rstrip("/"))))
