//! Every SQL statement the store runs, in one place: for review, and for tests that `EXPLAIN`
//! them. The schema they run against is `migrations/`.
//!
//! Arrays are passed whole and `unnest`ed, so a batch of any size is one statement with a fixed
//! text (prepared once per connection), never a statement built per batch.

/// Append, step 1: creates the batch's rooms that are new and locks every room row, in bytewise
/// order, so that concurrent appends (and retention) of the same rooms queue up instead of
/// deadlocking. `$1`: the batch's rooms (repeats allowed).
pub const APPEND_LOCK_ROOMS: &str = r#"
INSERT INTO chat_rooms AS r (room)
SELECT DISTINCT b.room COLLATE "C" FROM unnest($1::text[]) AS b(room) ORDER BY 1
ON CONFLICT (room) DO UPDATE SET seq = r.seq"#;

/// Append, step 2: inserts the records, one multi-row statement, in the batch's order (of two
/// records under one seq, the first is stored). Records whose (room, epoch, seq) is already
/// stored, and records at or below what retention deleted of their epoch, are skipped (step 3
/// tells the conflicts among them).
/// `$1..$7`: rooms, epochs, seqs, senders, timestamps, bodies, idempotency keys (one element
/// per record).
pub const APPEND_MESSAGES: &str = r#"
INSERT INTO chat_messages (room, epoch, seq, sender, ts, body, idem_key)
SELECT b.room, b.epoch, b.seq, b.sender, b.ts, b.body, b.idem_key
FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::bytea[], $7::text[]) WITH ORDINALITY
     AS b(room, epoch, seq, sender, ts, body, idem_key, ord)
LEFT JOIN chat_epochs e ON e.room = b.room AND e.epoch = b.epoch
WHERE b.seq > COALESCE(e.deleted_through, 0)
ORDER BY b.ord
ON CONFLICT DO NOTHING"#;

/// Append, step 3: the positions (from 1) of the batch's records that conflict with what is
/// stored under their (room, epoch, seq): another sender, or another body. Run after step 2,
/// so a record is compared with whatever got stored, an earlier record of the same batch
/// included (a record compares equal to itself). An erased message (`body` NULL) conflicts only
/// by its sender: its body is gone, so a resend of it cannot be told from another message.
/// `$1..$5`: rooms, epochs, seqs, senders, bodies.
pub const APPEND_CONFLICTS: &str = r#"
SELECT b.ord
FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::bytea[]) WITH ORDINALITY
     AS b(room, epoch, seq, sender, body, ord)
JOIN chat_messages m ON m.room = b.room AND m.epoch = b.epoch AND m.seq = b.seq
WHERE m.sender <> b.sender OR (m.body IS NOT NULL AND m.body IS DISTINCT FROM b.body)
ORDER BY b.ord"#;

/// Append, step 4: records each (room, epoch) of the batch with its highest seq. An epoch seen
/// for the first time gets the next `started`, in the order of its first record in the batch.
/// `$1..$3`: rooms, epochs, seqs (one element per record).
pub const APPEND_EPOCHS: &str = r#"
INSERT INTO chat_epochs AS e (room, epoch, seq)
SELECT b.room, b.epoch, max(b.seq)
FROM unnest($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY AS b(room, epoch, seq, ord)
GROUP BY b.room, b.epoch
ORDER BY min(b.ord)
ON CONFLICT (room, epoch) DO UPDATE SET seq = GREATEST(e.seq, EXCLUDED.seq)"#;

/// Append, step 5: sets each room of the batch to its epoch that began last, and that epoch's
/// highest seq. `$1`: the batch's rooms.
pub const APPEND_POSITIONS: &str = r#"
UPDATE chat_rooms r SET epoch = c.epoch, seq = c.seq
FROM (SELECT DISTINCT ON (e.room) e.room, e.epoch, e.seq
      FROM chat_epochs e WHERE e.room = ANY($1::text[])
      ORDER BY e.room, e.started DESC) AS c
WHERE r.room = c.room"#;

/// A page: the oldest `$5` of room `$1`, epoch `$2`, with `$3 < seq < $4`. Oldest first.
pub const PAGE_AFTER: &str = r#"
SELECT seq, sender, ts, body, idem_key FROM chat_messages
WHERE room = $1 AND epoch = $2 AND seq > $3 AND seq < $4
ORDER BY seq LIMIT $5"#;

/// A page: the newest `$4` of room `$1`, epoch `$2`, with `seq < $3`. Newest first (the store
/// reverses it).
pub const PAGE_BEFORE: &str = r#"
SELECT seq, sender, ts, body, idem_key FROM chat_messages
WHERE room = $1 AND epoch = $2 AND seq < $3
ORDER BY seq DESC LIMIT $4"#;

/// Where room `$1` stands.
pub const LATEST: &str = "SELECT epoch, seq FROM chat_rooms WHERE room = $1 AND epoch IS NOT NULL";

/// Erases message (`$1`, `$2`, `$3`): the body goes, the row stays.
pub const ERASE: &str = "UPDATE chat_messages SET body = NULL WHERE room = $1 AND epoch = $2 AND seq = $3";

/// Erases up to `$2` of user `$1`'s messages that still have a body (the store repeats it until
/// fewer come back).
pub const ERASE_USER_CHUNK: &str = r#"
UPDATE chat_messages m SET body = NULL
FROM (SELECT room, epoch, seq FROM chat_messages
      WHERE sender = $1 AND body IS NOT NULL LIMIT $2) AS x
WHERE m.room = x.room AND m.epoch = x.epoch AND m.seq = x.seq AND m.body IS NOT NULL"#;

/// Retention, a page of rooms: up to `$2` room names after `$1`, in bytewise order.
pub const RETAIN_ROOMS: &str = r#"
SELECT room FROM chat_rooms WHERE room > $1 ORDER BY room LIMIT $2"#;

/// Retention, the facts to plan a page of rooms with, per (room, epoch): when the epoch began,
/// its highest seq, its lowest and highest stored seq, the first stored seq among the first
/// `$3` with `ts >= cutoff` (the first message that is not expired), and, only when there is
/// none, the seq of the `$3`th stored row (NULL when fewer are stored). Every probe walks the
/// primary key in order and reads at most `$3` rows; `OFFSET 0` keeps the lateral subquery
/// from being flattened, which would evaluate `young` twice. `$1`, `$2`: rooms and their age
/// cutoffs (ms).
pub const RETAIN_PLAN: &str = r#"
SELECT e.room, e.epoch, e.started, e.seq, a.min_seq, a.max_seq, a.young,
       CASE WHEN a.young IS NULL AND a.min_seq IS NOT NULL THEN
           (SELECT m.seq FROM chat_messages m WHERE m.room = e.room AND m.epoch = e.epoch
            ORDER BY m.seq OFFSET $3 - 1 LIMIT 1)
       END AS window_end
FROM unnest($1::text[], $2::int8[]) AS p(room, cutoff)
JOIN chat_epochs e ON e.room = p.room
CROSS JOIN LATERAL (
    SELECT (SELECT m.seq FROM chat_messages m WHERE m.room = e.room AND m.epoch = e.epoch
            ORDER BY m.seq LIMIT 1) AS min_seq,
           (SELECT m.seq FROM chat_messages m WHERE m.room = e.room AND m.epoch = e.epoch
            ORDER BY m.seq DESC LIMIT 1) AS max_seq,
           (SELECT w.seq FROM (SELECT m.seq, m.ts FROM chat_messages m
                               WHERE m.room = e.room AND m.epoch = e.epoch
                               ORDER BY m.seq LIMIT $3) AS w
            WHERE w.ts >= p.cutoff ORDER BY w.seq LIMIT 1) AS young
    OFFSET 0
) AS a"#;

/// Retention, a chunk, step 1: locks the chunk's rooms (bytewise order, like appends).
pub const RETAIN_LOCK_ROOMS: &str = r#"
SELECT room FROM chat_rooms WHERE room = ANY($1::text[]) ORDER BY room FOR NO KEY UPDATE"#;

/// Retention, a chunk, step 2: raises each epoch's `deleted_through`, so that appends skip what
/// is deleted. `$1..$3`: rooms, epochs, seqs.
pub const RETAIN_FLOORS: &str = r#"
UPDATE chat_epochs e SET deleted_through = GREATEST(e.deleted_through, d.upto)
FROM unnest($1::text[], $2::text[], $3::int8[]) AS d(room, epoch, upto)
WHERE e.room = d.room AND e.epoch = d.epoch"#;

/// Retention, a chunk, step 3: deletes seq ranges `$3 ..= $4` of (room `$1`, epoch `$2`).
pub const RETAIN_DELETE: &str = r#"
DELETE FROM chat_messages m
USING unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS d(room, epoch, lo, hi)
WHERE m.room = d.room AND m.epoch = d.epoch AND m.seq >= d.lo AND m.seq <= d.hi"#;
