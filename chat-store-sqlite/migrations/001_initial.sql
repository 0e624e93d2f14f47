-- 001_initial: rooms, their epochs, and their messages.
--
-- A message is keyed by (epoch_id, seq), and an epoch row stands for one (room, epoch) pair,
-- so the key is (room, epoch, seq) in two integers: a page is one range scan of the messages
-- table's own b-tree (WITHOUT ROWID), with no lookup elsewhere.

-- One row per room ever stored; never deleted, so a room whose messages all expired still
-- knows where it stood (`Store::latest`).
CREATE TABLE rooms (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL UNIQUE,
    epoch_id INTEGER NOT NULL, -- the current epoch: the one whose first record came last
    seq      INTEGER NOT NULL  -- the highest seq stored in the current epoch
);

-- One row per (room, epoch) ever stored. Ids grow with each new epoch (rows are never
-- deleted), so a room's epochs in id order are its epochs oldest first.
CREATE TABLE epochs (
    id      INTEGER PRIMARY KEY,
    room_id INTEGER NOT NULL,
    epoch   TEXT NOT NULL,
    floor   INTEGER NOT NULL DEFAULT 0, -- the highest seq retention deleted: a resend at or below it stays deleted
    count   INTEGER NOT NULL DEFAULT 0, -- how many messages are stored (retention by count reads it)
    UNIQUE (room_id, epoch)
);

CREATE TABLE messages (
    epoch_id INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    sender   TEXT NOT NULL,
    ts       INTEGER NOT NULL, -- milliseconds since the Unix epoch
    body     BLOB,             -- the body's JSON text; NULL once erased (a tombstone)
    PRIMARY KEY (epoch_id, seq)
) WITHOUT ROWID;

-- Erasing a user's messages reads this, not the whole table; tombstones leave it.
CREATE INDEX messages_by_sender ON messages (sender) WHERE body IS NOT NULL;
