// matrix-js-sdk drives a Ganglion homeserver through one two-user conversation.
//
// Usage: node scenario.mjs <homeserver base URL>, e.g. http://127.0.0.1:18008
//
// Every assertion reads what the SDK's own sync machinery made of the server's
// responses (Room, RoomMember, receipts, account data, notification counts,
// timeline callbacks, its device, search, directory and password calls), not
// raw HTTP. Crypto is never initialised (the Rust scenario covers it). The SDK's own logging is muted, except errors,
// unless SDK_DEBUG=1.
//
// Steps 1-2 set up the room every later step needs, so a failure there stops
// the run; steps 3-14 each run even if an earlier one failed, and the exit
// status is 1 with a list of every failed step.

import { randomBytes } from "node:crypto";
import { deflateSync } from "node:zlib";
import { isDeepStrictEqual } from "node:util";
import * as sdk from "matrix-js-sdk";

const WAIT_MS = 10_000; // deadline for any one condition to appear in a client's state
const POLL_MS = 50; // how often a waiting step re-reads the client's state
const SYNC_TIMEOUT_MS = 5_000; // long-poll timeout the sync loops ask the server for
const OVERALL_MS = 60_000; // deadline for the whole scenario

if (!process.env.SDK_DEBUG) {
    // The SDK logs through console.* looked up at call time; keep its chatter
    // out of the step log but let its errors through to stderr.
    console.log = console.info = console.debug = console.trace = console.warn = () => {};
    // The SDK logs this at error level for every newly joined room, whatever
    // the server does (matrix-org/matrix-js-sdk#3781, #4808).
    const error = console.error;
    console.error = (...args) => {
        // And this when a deleted device's token is refused, as the scenario
        // expects.
        const expected = ["Got room state event for unknown room", "Unable to refresh token"];
        if (!args.some((a) => expected.some((e) => String(a).includes(e)))) error(...args);
    };
}

class ScenarioFailed extends Error {}

function say(message) {
    process.stdout.write(`[js] ${message}\n`);
}

function check(condition, message) {
    if (!condition) throw new ScenarioFailed(message);
}

/** Await an SDK call; turn a server error into a failure naming the request. */
async function ok(promise, what) {
    try {
        return await promise;
    } catch (err) {
        const detail = err.httpStatus ? `${err.httpStatus} ${err.errcode ?? ""} ${err.message}` : String(err);
        throw new ScenarioFailed(`${what} failed: ${detail}`);
    }
}

/** One user: a logged-in client whose sync loop runs in the background. */
class Peer {
    constructor(baseUrl, login, password) {
        this.userId = login.user_id;
        this.password = password;
        // While `away` holds a promise, this client's /sync requests wait
        // for it: the client is away, and resumes with its sync token.
        this.away = null;
        this.client = sdk.createClient({
            baseUrl,
            userId: login.user_id,
            accessToken: login.access_token,
            deviceId: login.device_id,
            fetchFn: async (url, options) => {
                if (String(url).includes("/sync") && this.away) await this.away.promise;
                return fetch(url, options);
            },
        });
        this.syncErrors = [];
        this.messages = []; // { roomId, eventId, body } from RoomEvent.Timeline
        this.client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
            if (state === sdk.SyncState.Error) this.syncErrors.push(String(data?.error ?? "unknown sync error"));
        });
        this.client.on(sdk.RoomEvent.Timeline, (event, room, toStart, _removed, data) => {
            if (toStart || !data?.liveEvent || event.getType() !== "m.room.message") return;
            this.messages.push({ roomId: room.roomId, eventId: event.getId(), body: event.getContent().body });
        });
    }

    async start() {
        await this.client.startClient({ initialSyncLimit: 20, pollTimeout: SYNC_TIMEOUT_MS });
        await this.waitFor(() => this.client.isInitialSyncComplete(), "the initial sync");
    }

    /** Wait until predicate() is truthy in this client's state, or fail at the deadline. */
    async waitFor(predicate, what) {
        const deadline = Date.now() + WAIT_MS;
        for (;;) {
            const value = predicate();
            if (value) return value;
            if (this.syncErrors.length > 0) {
                throw new ScenarioFailed(`${this.userId}'s sync failed while waiting for ${what}: ${this.syncErrors.at(-1)}`);
            }
            if (Date.now() > deadline) throw new ScenarioFailed(`${this.userId}: timed out waiting for ${what}`);
            await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        }
    }

    room(roomId) {
        return this.client.getRoom(roomId);
    }

    stop() {
        this.client.stopClient();
    }
}

/** Register through user-interactive auth, driven by the SDK's InteractiveAuth. */
async function register(baseUrl, localpart, password) {
    const anonymous = sdk.createClient({ baseUrl });
    const attempts = [];
    const auth = new sdk.InteractiveAuth({
        matrixClient: anonymous,
        doRequest: (authDict) => {
            attempts.push(authDict);
            return anonymous.registerRequest({
                username: localpart,
                password,
                initial_device_display_name: "js-scenario",
                ...(authDict ? { auth: authDict } : {}),
            });
        },
        stateUpdated: (stage, status) => {
            if (status?.errcode) say(`  UIA stage ${stage} error: ${status.errcode} ${status.error}`);
        },
        requestEmailToken: () => Promise.reject(new Error("the server asked for an email stage")),
    });
    const response = await ok(auth.attemptAuth(), `register ${localpart}`);
    // The SDK first asks without auth (401 with flows and a session), then
    // completes the m.login.dummy stage in that session.
    check(attempts.length === 2 && !attempts[0], `expected 2 register attempts, first without auth: ${JSON.stringify(attempts)}`);
    check(attempts[1]?.type === "m.login.dummy" && attempts[1]?.session, `second attempt: ${JSON.stringify(attempts[1])}`);
    check(response.user_id?.startsWith(`@${localpart}:`), `registered ${response.user_id}`);
    check(response.access_token, "registration returned no access token");
    return response.user_id;
}

async function login(baseUrl, userId, password) {
    const anonymous = sdk.createClient({ baseUrl });
    const response = await ok(
        anonymous.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: userId },
            password,
            initial_device_display_name: "js-scenario",
        }),
        `login ${userId}`,
    );
    check(response.user_id === userId, `login returned ${response.user_id}`);
    const peer = new Peer(baseUrl, response, password);
    const whoami = await ok(peer.client.whoami(), "whoami");
    check(whoami.user_id === userId, `whoami says ${whoami.user_id}`);
    return peer;
}

function topicOf(room) {
    return room.currentState.getStateEvents("m.room.topic", "")?.getContent().topic;
}

async function setup(baseUrl) {
    const suffix = randomBytes(4).toString("hex");
    const password = `correct horse ${suffix}`;

    say("step 1: register alice and bob (UIA with m.login.dummy), then log in with m.login.password");
    const aliceId = await register(baseUrl, `alice-${suffix}`, password);
    const bobId = await register(baseUrl, `bob-${suffix}`, password);
    say(`  registered ${aliceId} and ${bobId}`);
    const alice = await login(baseUrl, aliceId, password);
    const bob = await login(baseUrl, bobId, password);
    say(`  both logged in (alice device ${alice.client.getDeviceId()}, bob device ${bob.client.getDeviceId()})`);
    await alice.start();
    await bob.start();
    say("  both clients finished their initial sync");

    say("step 2: alice creates a named room with a topic and invites bob; bob joins");
    const name = `Ganglion js ${suffix}`;
    const topic = "SDK scenario topic";
    const { room_id: roomId } = await ok(alice.client.createRoom({ name, topic }), "createRoom");
    say(`  created ${roomId}`);
    await ok(alice.client.invite(roomId, bobId), "invite");
    const invited = await bob.waitFor(
        () => bob.room(roomId)?.getMyMembership() === sdk.KnownMembership.Invite && bob.room(roomId),
        "the invite in bob's rooms",
    );
    const inviter = invited.getMember(bobId)?.events.member?.getSender();
    check(inviter === aliceId, `invite shows inviter ${inviter}`);
    say(`  bob's client shows membership invite from ${inviter} to ${JSON.stringify(invited.name)}`);
    await ok(bob.client.joinRoom(roomId), "join");

    for (const peer of [alice, bob]) {
        const room = await peer.waitFor(() => {
            const r = peer.room(roomId);
            const joined = (u) => r?.getMember(u)?.membership === sdk.KnownMembership.Join;
            return joined(aliceId) && joined(bobId) && r;
        }, "alice and bob both joined");
        check(room.getMyMembership() === sdk.KnownMembership.Join, `${peer.userId} membership ${room.getMyMembership()}`);
        check(room.getJoinedMemberCount() === 2, `${peer.userId} sees ${room.getJoinedMemberCount()} joined`);
        check(room.name === name, `${peer.userId} sees name ${JSON.stringify(room.name)}`);
        check(topicOf(room) === topic, `${peer.userId} sees topic ${JSON.stringify(topicOf(room))}`);
        say(`  ${peer.userId} sees both joined, name ${JSON.stringify(room.name)}, topic ${JSON.stringify(topicOf(room))}`);
    }
    return { alice, bob, roomId };
}

async function stepMessages({ alice, bob, roomId }, state) {
    say("step 3: alice sends two text messages; bob's timeline callbacks receive them");
    const bodies = ["hello bob", "second message"];
    const eventIds = [];
    for (const body of bodies) eventIds.push((await ok(alice.client.sendTextMessage(roomId, body), "send")).event_id);
    await bob.waitFor(() => {
        const seen = bob.messages.filter((m) => m.roomId === roomId).slice(-2);
        return isDeepStrictEqual(seen.map((m) => [m.eventId, m.body]), eventIds.map((id, i) => [id, bodies[i]]));
    }, "both messages in bob's timeline callbacks");
    const live = bob.room(roomId).getLiveTimeline().getEvents().map((e) => e.getId());
    check(eventIds.every((id) => live.includes(id)), "messages missing from bob's live timeline");
    state.lastEvent = eventIds.at(-1);
    say(`  bob received ${JSON.stringify(bodies)} in order (${eventIds.join(", ")})`);
}

/** CRC-32 (IEEE), for PNG chunks. */
function crc32(bytes) {
    let crc = 0xffffffff;
    for (const byte of bytes) {
        crc ^= byte;
        for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
    }
    return (crc ^ 0xffffffff) >>> 0;
}

/** An RGB PNG of a colour gradient, made without an imaging library. */
function png(width, height) {
    const chunk = (kind, data) => {
        const body = Buffer.concat([Buffer.from(kind, "ascii"), data]);
        const length = Buffer.alloc(4);
        length.writeUInt32BE(data.length);
        const crc = Buffer.alloc(4);
        crc.writeUInt32BE(crc32(body));
        return Buffer.concat([length, body, crc]);
    };
    const rows = [];
    for (let y = 0; y < height; y++) {
        const row = Buffer.alloc(1 + width * 3);
        for (let x = 0; x < width; x++) row.set([x % 256, y % 256, 90], 1 + x * 3);
        rows.push(row);
    }
    const header = Buffer.alloc(13);
    header.writeUInt32BE(width, 0);
    header.writeUInt32BE(height, 4);
    header.set([8, 2, 0, 0, 0], 8);
    return Buffer.concat([
        Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
        chunk("IHDR", header),
        chunk("IDAT", deflateSync(Buffer.concat(rows))),
        chunk("IEND", Buffer.alloc(0)),
    ]);
}

async function stepMedia({ alice, bob, roomId }) {
    say("step: alice uploads a picture and sends it as m.image; bob downloads it and its thumbnail");
    const picture = png(400, 200);
    const uploaded = await ok(alice.client.uploadContent(picture, { type: "image/png", name: "gradient.png" }), "upload");
    const mxc = uploaded.content_uri;
    check(typeof mxc === "string" && mxc.startsWith("mxc://"), `upload returned ${JSON.stringify(uploaded)}`);
    const content = {
        msgtype: "m.image",
        body: "gradient.png",
        url: mxc,
        info: { mimetype: "image/png", size: picture.length, w: 400, h: 200 },
    };
    const sent = await ok(alice.client.sendMessage(roomId, content), "send m.image");
    const event = await bob.waitFor(() => bob.room(roomId)?.findEventById(sent.event_id), "the m.image in bob's timeline");
    check(event.getContent().url === mxc, `bob's image event names ${event.getContent().url}`);
    // Authenticated media: the SDK builds the URLs, the token goes in a header.
    const headers = { Authorization: `Bearer ${bob.client.getAccessToken()}` };
    const downloadUrl = bob.client.mxcUrlToHttp(mxc, undefined, undefined, undefined, false, true, true);
    check(downloadUrl?.includes("/_matrix/client/v1/media/download/"), `download URL ${downloadUrl}`);
    const download = await fetch(downloadUrl, { headers });
    check(download.status === 200, `download answered ${download.status}`);
    check(download.headers.get("content-type") === "image/png", `downloaded as ${download.headers.get("content-type")}`);
    const bytes = Buffer.from(await download.arrayBuffer());
    check(bytes.equals(picture), "the downloaded bytes differ from the upload");
    const thumbnailUrl = bob.client.mxcUrlToHttp(mxc, 96, 96, "crop", false, true, true);
    const thumbnail = await fetch(thumbnailUrl, { headers });
    check(thumbnail.status === 200, `thumbnail answered ${thumbnail.status}`);
    check(thumbnail.headers.get("content-type") === "image/png", `thumbnail is ${thumbnail.headers.get("content-type")}`);
    const small = Buffer.from(await thumbnail.arrayBuffer());
    const size = [small.readUInt32BE(16), small.readUInt32BE(20)];
    check(isDeepStrictEqual(size, [96, 96]), `thumbnail is ${size.join("x")}`);
    say(`  bob downloaded ${bytes.length} bytes of ${mxc} and a 96x96 thumbnail`);
}

function typingUsers(peer, roomId) {
    return peer.room(roomId).getMembers().filter((m) => m.typing).map((m) => m.userId);
}

async function stepTyping({ alice, bob, roomId }) {
    say("step 4: alice types (timeout 30 s), then stops; bob's room members' typing flags follow");
    await ok(alice.client.sendTyping(roomId, true, 30_000), "typing on");
    await bob.waitFor(() => typingUsers(bob, roomId).includes(alice.userId), "alice among typing users");
    say(`  bob sees typing users ${JSON.stringify(typingUsers(bob, roomId))}`);
    await ok(alice.client.sendTyping(roomId, false, 0), "typing off");
    await bob.waitFor(() => typingUsers(bob, roomId).length === 0, "no typing users");
    say("  bob sees typing users []");
}

function lastEvent(state) {
    check(state.lastEvent, "no message from step 3 to refer to");
    return state.lastEvent;
}

async function stepReceipt({ alice, bob, roomId }, state) {
    say("step 5: bob sends an m.read receipt for alice's last message; alice's client sees it");
    const eventId = lastEvent(state);
    const event = bob.room(roomId).findEventById(eventId);
    check(event, `bob's room has no event ${eventId}`);
    await ok(bob.client.sendReadReceipt(event, sdk.ReceiptType.Read), "receipt");
    // ignoreSynthesized: only a receipt that came from the server counts.
    await alice.waitFor(
        () => alice.room(roomId).getReadReceiptForUserId(bob.userId, true, sdk.ReceiptType.Read)?.eventId === eventId,
        `bob's receipt on ${eventId}`,
    );
    const aliceEvent = alice.room(roomId).findEventById(eventId);
    const readers = alice.room(roomId).getUsersReadUpTo(aliceEvent);
    check(readers.includes(bob.userId), `getUsersReadUpTo gives ${JSON.stringify(readers)}`);
    say(`  alice sees bob's m.read on ${eventId}; read up to it: ${JSON.stringify(readers)}`);
}

async function stepReadMarkers({ bob, roomId }, state) {
    say("step 6: bob sets m.fully_read with setRoomReadMarkers; his room account data shows it");
    const eventId = lastEvent(state);
    await ok(bob.client.setRoomReadMarkers(roomId, eventId), "read_markers");
    await bob.waitFor(
        () => bob.room(roomId).getAccountData("m.fully_read")?.getContent().event_id === eventId,
        "m.fully_read in bob's room account data",
    );
    say(`  bob's room account data m.fully_read = ${eventId}`);
}

async function stepAccountData({ alice, roomId }) {
    say("step 7: global account data and a room tag round-trip through alice's sync");
    const kind = "org.ganglion.sdk_scenario";
    const content = { colour: "green", nonce: randomBytes(4).toString("hex") };
    // setAccountData resolves only once the change came back through sync.
    await ok(withDeadline(alice.client.setAccountData(kind, content), `${kind} echoed by sync`), "setAccountData");
    check(isDeepStrictEqual(alice.client.getAccountData(kind)?.getContent(), content), `getAccountData gives ${JSON.stringify(alice.client.getAccountData(kind)?.getContent())}`);
    say(`  alice's client holds ${kind} = ${JSON.stringify(content)}`);

    await ok(alice.client.setRoomTag(roomId, "m.favourite", { order: 0.5 }), "setRoomTag");
    await alice.waitFor(() => alice.room(roomId).tags["m.favourite"]?.order === 0.5, "m.favourite (order 0.5) in alice's room tags");
    say(`  alice's room tags are ${JSON.stringify(alice.room(roomId).tags)}`);
    await ok(alice.client.deleteRoomTag(roomId, "m.favourite"), "deleteRoomTag");
    await alice.waitFor(() => !("m.favourite" in alice.room(roomId).tags), "m.favourite removed");
    say(`  after deleting it alice's room tags are ${JSON.stringify(alice.room(roomId).tags)}`);
}

function withDeadline(promise, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new ScenarioFailed(`timed out waiting for ${what}`)), WAIT_MS);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function stepUnread({ alice, bob, roomId }) {
    say("step 8: a message bob has not read counts as a notification until his receipt");
    const { event_id: eventId } = await ok(alice.client.sendTextMessage(roomId, "are you there?"), "send");
    const count = () => bob.room(roomId).getUnreadNotificationCount(sdk.NotificationCountType.Total);
    await bob.waitFor(
        () => bob.messages.some((m) => m.eventId === eventId) && count() > 0,
        "the new message and a notification count > 0",
    );
    say(`  bob's room notification count (total) = ${count()}`);
    await ok(bob.client.sendReadReceipt(bob.room(roomId).findEventById(eventId), sdk.ReceiptType.Read), "receipt");
    await bob.waitFor(() => count() === 0, "notification count 0");
    say("  after bob's receipt the notification count is 0");
}

async function stepGappedSync({ alice, bob, roomId }) {
    say("step: bob is away while alice renames the room, changes its topic and sends 30 messages");
    // The sync in flight returns with this message; the next one waits.
    let release;
    bob.away = { promise: new Promise((resolve) => (release = resolve)) };
    const marker = (await ok(alice.client.sendTextMessage(roomId, "before the gap"), "send")).event_id;
    await bob.waitFor(() => bob.room(roomId)?.findEventById(marker), "the message before the gap");
    await ok(alice.client.setRoomTopic(roomId, "changed while away"), "topic");
    await ok(alice.client.setRoomName(roomId, "Renamed"), "name");
    let last;
    for (let i = 0; i < 30; i++) last = (await ok(alice.client.sendTextMessage(roomId, `away ${i}`), "send")).event_id;
    bob.away = null;
    release();
    await bob.waitFor(() => bob.room(roomId)?.findEventById(last), "alice's last message after the gap");
    const room = bob.room(roomId);
    check(!room.findEventById(marker), "the timeline before the gap was kept: it was not limited");
    check(room.name === "Renamed", `bob sees name ${JSON.stringify(room.name)}`);
    check(topicOf(room) === "changed while away", `bob sees topic ${JSON.stringify(topicOf(room))}`);
    check(room.getJoinedMemberCount() === 2, `bob sees ${room.getJoinedMemberCount()} joined`);
    say(`  bob's room after the gap: name ${JSON.stringify(room.name)}, topic ${JSON.stringify(topicOf(room))}`);
}

async function stepLeave({ alice, bob, roomId }) {
    say("step 14: bob leaves; alice sees his membership leave, bob's room moves to leave");
    await ok(bob.client.leave(roomId), "leave");
    await alice.waitFor(
        () => alice.room(roomId).getMember(bob.userId)?.membership === sdk.KnownMembership.Leave,
        "bob's membership leave in alice's room",
    );
    say(`  alice sees ${bob.userId} membership leave; joined count ${alice.room(roomId).getJoinedMemberCount()}`);
    await bob.waitFor(() => bob.room(roomId)?.getMyMembership() === sdk.KnownMembership.Leave, "bob's own membership leave");
    const joinedIds = bob.client.getRooms().filter((r) => r.getMyMembership() === sdk.KnownMembership.Join).map((r) => r.roomId);
    check(!joinedIds.includes(roomId), "bob's client still lists the room as joined");
    say("  bob's client shows his membership as leave and no longer lists the room as joined");
}

/**
 * User-Interactive Auth with the password: `call(undefined)` must be
 * answered 401 with an `m.login.password` flow and a session, then
 * `call(auth)` completes it in that session.
 */
async function withPassword(peer, call, what) {
    let session;
    try {
        await call(undefined);
        throw new ScenarioFailed(`${what} did not ask for the password`);
    } catch (err) {
        if (err instanceof ScenarioFailed) throw err;
        const flows = err.data?.flows ?? [];
        check(
            err.httpStatus === 401 && flows.some((f) => f.stages?.includes("m.login.password")),
            `${what}: ${err.httpStatus} ${JSON.stringify(err.data)}`,
        );
        session = err.data.session;
        check(session, `${what}: no UIA session`);
    }
    const auth = { type: "m.login.password", identifier: { type: "m.id.user", user: peer.userId }, password: peer.password, session };
    return ok(call(auth), what);
}

async function stepDevices({ alice }) {
    say("step 10: alice logs in a second device, renames it, deletes it with her password (UIA)");
    const second = await login(alice.client.baseUrl, alice.userId, alice.password);
    const secondId = second.client.getDeviceId();
    const listed = await ok(alice.client.getDevices(), "getDevices");
    const ids = listed.devices.map((d) => d.device_id);
    check(ids.includes(secondId) && ids.includes(alice.client.getDeviceId()), `devices ${JSON.stringify(ids)}`);
    await ok(alice.client.setDeviceDetails(secondId, { display_name: "js second" }), "setDeviceDetails");
    const renamed = await ok(alice.client.getDevice(secondId), "getDevice");
    check(renamed.display_name === "js second", `renamed to ${JSON.stringify(renamed.display_name)}`);
    await withPassword(alice, (auth) => alice.client.deleteDevice(secondId, auth), "deleteDevice");
    const after = await ok(alice.client.getDevices(), "getDevices");
    check(!after.devices.some((d) => d.device_id === secondId), "the deleted device is still listed");
    try {
        await second.client.whoami();
        throw new ScenarioFailed("the deleted device's token still works");
    } catch (err) {
        if (err instanceof ScenarioFailed) throw err;
        check(err.httpStatus === 401, `the deleted device's whoami: ${err.httpStatus}`);
    }
    say(`  listed ${ids.length} devices, renamed and deleted ${secondId}; its token is refused`);
}

// Calls `fetch()` until `found(answer)` holds; fails with the last answer
// once WAIT_MS has passed.
async function pollUntil(fetch, found, what) {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
        const answer = await fetch();
        if (found(answer)) return answer;
        check(Date.now() < deadline, `${what} found ${JSON.stringify(answer)}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
    }
}

async function stepSearch({ alice, bob, roomId }) {
    say("step 11: bob finds alice's message by a word of it (server-side search)");
    const word = `needle${randomBytes(3).toString("hex")}`;
    await ok(alice.client.sendTextMessage(roomId, `a ${word} in the haystack`), "send");
    const hits = await pollUntil(
        async () => (await ok(bob.client.searchRoomEvents({ term: word }), "searchRoomEvents")).results
            .map((r) => r.context.getEvent().getContent().body),
        (hits) => hits.includes(`a ${word} in the haystack`),
        `search for ${word}`,
    );
    say(`  bob's search for ${word} found ${hits.length} result(s)`);
}

async function stepDirectory({ alice, bob }) {
    say("step 12: alice finds bob in the user directory by his display name");
    const name = `Bob ${randomBytes(3).toString("hex")}`;
    await ok(bob.client.setDisplayName(name), "setDisplayName");
    const response = await pollUntil(
        () => ok(alice.client.searchUserDirectory({ term: name.split(" ")[1] }), "searchUserDirectory"),
        (response) => response.results.some((r) => r.user_id === bob.userId),
        "directory search",
    );
    const hit = response.results.find((r) => r.user_id === bob.userId);
    check(hit.display_name === name, `directory shows ${JSON.stringify(hit.display_name)}`);
    say(`  found ${hit.user_id} as ${JSON.stringify(hit.display_name)} (limited ${response.limited})`);
}

async function stepPassword({ bob }) {
    say("step 13: bob changes his password (UIA); the old one stops working, the new one logs in");
    const newPassword = `${bob.password} changed`;
    await withPassword(bob, (auth) => bob.client.setPassword(auth, newPassword, true), "setPassword");
    const anonymous = sdk.createClient({ baseUrl: bob.client.baseUrl });
    try {
        await anonymous.loginRequest({ type: "m.login.password", identifier: { type: "m.id.user", user: bob.userId }, password: bob.password });
        throw new ScenarioFailed("the old password still logs in");
    } catch (err) {
        if (err instanceof ScenarioFailed) throw err;
        check(err.httpStatus === 403 && err.errcode === "M_FORBIDDEN", `old password: ${err.httpStatus} ${err.errcode}`);
    }
    const again = await login(bob.client.baseUrl, bob.userId, newPassword);
    again.stop();
    const whoami = await ok(bob.client.whoami(), "whoami on the device that changed it");
    check(whoami.user_id === bob.userId, "the changing device was logged out");
    bob.password = newPassword;
    say("  the old password is refused with M_FORBIDDEN, the new one logs in, this device stays");
}

async function main(baseUrl) {
    const started = Date.now();
    say(`homeserver ${baseUrl}`);
    let peers;
    const failures = [];
    try {
        try {
            peers = await setup(baseUrl);
        } catch (err) {
            say(`FAILED during setup: ${err.message}`);
            return 1;
        }
        const state = {};
        for (const step of [stepMessages, stepTyping, stepReceipt, stepReadMarkers, stepAccountData, stepUnread, stepGappedSync, stepMedia, stepDevices, stepSearch, stepDirectory, stepPassword, stepLeave]) {
            try {
                await step(peers, state);
            } catch (err) {
                const message = err instanceof ScenarioFailed ? err.message : `unexpected ${err?.stack ?? err}`;
                failures.push(`${step.name}: ${message}`);
                say(`  FAILED: ${message}`);
            }
        }
    } finally {
        peers?.alice.stop();
        peers?.bob.stop();
    }
    const elapsed = ((Date.now() - started) / 1000).toFixed(1);
    if (failures.length > 0) {
        say(`${failures.length} step(s) failed in ${elapsed} s:`);
        for (const failure of failures) say(`  - ${failure}`);
        return 1;
    }
    say(`all steps passed in ${elapsed} s`);
    return 0;
}

if (process.argv.length !== 3) {
    process.stderr.write("usage: node scenario.mjs <homeserver base URL>\n");
    process.exit(2);
}
setTimeout(() => {
    say(`FAILED: the scenario did not finish within ${OVERALL_MS / 1000} s`);
    process.exit(1);
}, OVERALL_MS).unref();
// Exit explicitly: stopped clients may leave timers that would keep Node alive.
main(process.argv[2].replace(/\/+$/, "")).then(
    (code) => process.exit(code),
    (err) => {
        process.stderr.write(`[js] unexpected error: ${err?.stack ?? err}\n`);
        process.exit(1);
    },
);
