"""
The Redis key schema: every key imserver uses is built here, all under ``im:``.

Each area has its own section. Values are strings; hashes hold records.
"""

PREFIX = "im:"

# -- accounts -------------------------------------------------------------
def user_seq() -> str:               # INCR -> next user id
    return "im:user:seq"

def user(uid) -> str:                # hash: phone, username, nickname, avatar, gender,
    return f"im:user:{uid}"          # profile fields, level, created, pw (argon2 hash)

def phone_index() -> str:            # hash: phone -> user id
    return "im:idx:phone"

def username_index() -> str:         # hash: lower(username) -> user id
    return "im:idx:username"

def token(tok_hash) -> str:          # string: user id, with expiry; keyed by sha256(token)
    return f"im:token:{tok_hash}"

def user_tokens(uid) -> str:         # set of token hashes of a user (revocation)
    return f"im:user:{uid}:tokens"

def sms_code(phone) -> str:          # hash: hash, attempts, sent; short expiry
    return f"im:sms:code:{phone}"

def sms_throttle(phone) -> str:      # string: set while a new code may not be sent yet
    return f"im:sms:throttle:{phone}"

def sms_secret() -> str:             # string: the HMAC key SMS codes are stored under
    return "im:secret:sms"

def sms_verified(phone) -> str:      # string: time of the last successful verification
    return f"im:sms:verified:{phone}"

def sms_echo(phone) -> str:          # string: last code, only with --sms-echo
    return f"im:sms:echo:{phone}"

# -- limits ---------------------------------------------------------------
def rate(name, key, window_start) -> str:
    return f"im:rate:{name}:{key}:{window_start}"

# -- presence -------------------------------------------------------------
def processes() -> str:              # hash: process id -> started
    return "im:procs"

def process_alive(pid) -> str:       # string with expiry: the process heartbeat
    return f"im:proc:{pid}:alive"

def process_conns(pid) -> str:       # set of connection ids held by a process
    return f"im:proc:{pid}:conns"

def conn(conn_id) -> str:            # hash: user_id, dialect, process, since, info (JSON)
    return f"im:conn:{conn_id}"

def user_conns(uid) -> str:          # set of connection ids of a user
    return f"im:user:{uid}:conns"

# -- bus ------------------------------------------------------------------
def bus_channel(topic) -> str:
    return f"im:bus:{topic}"

# -- rooms (imserver.core.rooms; q is the room name, URL-quoted) ------------
def room_index() -> str:             # zset: room name -> created
    return "im:rooms"

def room(q) -> str:                  # hash: name, capacity, creator_id, cover, created
    return f"im:room:{q}"

def room_conns(q) -> str:            # hash: conn id -> "<occupant>|<JSON member, dialect, t>"
    return f"im:room:{q}:conns"

def room_occupants(q) -> str:        # hash: occupant ("u:<uid>" / "g:<conn>") -> references
    return f"im:room:{q}:occ"

def room_reservations(q) -> str:     # zset: user id -> expiry (+inf while connected)
    return f"im:room:{q}:resv"

def room_log(q) -> str:              # stream: the room's chat, capped
    return f"im:room:{q}:log"

def conn_rooms(conn_id) -> str:      # set: rooms a connection is in
    return f"im:roomsof:{conn_id}"

# -- catalog (imserver.core.catalog; kind is "videos" or "songs") ------------
def catalog_seeded() -> str:         # string: set once a catalogue (sample or import) exists
    return "im:catalog:seeded"

def catalog_current(kind) -> str:    # string: the generation being served
    return f"im:catalog:{kind}:current"

def catalog_items(kind, gen) -> str:  # hash: id -> JSON entry
    return f"im:catalog:{kind}:{gen}:items"

def catalog_order(kind, gen) -> str:  # zset: id -> position in the imported file
    return f"im:catalog:{kind}:{gen}:order"

def catalog_cate(kind, gen, q) -> str:  # zset: id -> position, one category (q: quoted)
    return f"im:catalog:{kind}:{gen}:cate:{q}"

def catalog_cates(kind, gen) -> str:  # set: the categories of a generation
    return f"im:catalog:{kind}:{gen}:cates"

# -- live -----------------------------------------------------------------
def live_user(uid) -> str:           # hash: stream, id, play, hls, title, desc (JSON), opened,
    return f"im:live:user:{uid}"     # state (open|publishing|idle); expires with the publish key

def live_stream(stream) -> str:      # string: owner's user id; expires with the publish key
    return f"im:live:stream:{stream}"

def live_secret() -> str:            # string: the deployment's publish-key secret (no --stream-secret)
    return "im:live:secret"

# -- ktv stage (imserver.core.stage; q is the room name, URL-quoted) --------
def ktv_stage(q) -> str:             # hash: ver, status, start, dur, item (JSON entry)
    return f"im:ktv:{q}:stage"

def ktv_songs(q) -> str:             # list: the song queue (JSON entries)
    return f"im:ktv:{q}:songs"

def ktv_musics(q) -> str:            # list: the music queue (JSON entries)
    return f"im:ktv:{q}:musics"

def ktv_seen(q, marker) -> str:      # string with expiry: a member event already folded in
    return f"im:ktv:{q}:seen:{marker}"

# -- signal: groups and messages (imserver.core.groups, imserver.core.messages) --
def group_seq() -> str:              # INCR -> next group id
    return "im:group:seq"

def group(gid) -> str:               # hash: creator, name, notice, snap, created
    return f"im:group:{gid}"

def group_members(gid) -> str:       # zset: user id -> join time (ms, Redis clock); join order
    return f"im:group:{gid}:members"

def group_log(gid) -> str:           # stream: the group's messages, capped by length and age
    return f"im:group:{gid}:log"

def user_groups(uid) -> str:         # set: ids of the groups a user belongs to
    return f"im:user:{uid}:groups"

def direct_log(a, b) -> str:         # stream: the direct conversation of two users (ids sorted)
    lo, hi = sorted((int(a), int(b)))
    return f"im:dm:{lo}:{hi}"

def user_peers(uid) -> str:          # zset: peer user id -> time (ms) of the last direct message
    return f"im:user:{uid}:peers"

def user_offline_since(uid) -> str:  # string: Redis time (ms) the user's last connection closed
    return f"im:user:{uid}:offline"

def message_clock() -> str:          # string: the last message id given out ("<ms>-<seq>"); ids
    return "im:msg:clock"            # of all conversations form one increasing sequence

# -- account: friends and gold (imserver.core.friends, imserver.core.wallet) --
def friends(uid) -> str:             # zset: friend's user id -> since (epoch ms)
    return f"im:friends:{uid}"

def friend_request(a, b) -> str:     # hash: ts (ms), state (pending|accepted), accepted; a asked b
    return f"im:friend:req:{a}:{b}"

def friend_messages(uid) -> str:     # zset: "<a>:<b>" (requests the user sees) -> ts (ms)
    return f"im:friend:msgs:{uid}"

def gold(uid) -> str:                # string: the user's gold balance (integer)
    return f"im:gold:{uid}"

def gold_ledger(uid) -> str:         # list, newest first: JSON ledger entries the user is part of
    return f"im:gold:{uid}:ledger"

def gold_seq() -> str:               # INCR -> next ledger entry id
    return "im:gold:seq"
