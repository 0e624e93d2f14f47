-- 002_keys: each message's idempotency key.
--
-- A broker that lost a room's state goes on from this store, and is handed the keys of the
-- room's recent messages (read with the page, newest first): a client resending after the loss
-- gets the original seq. NULL for a message sent without a key; adding a nullable column
-- without a default rewrites nothing.
ALTER TABLE chat_messages ADD COLUMN idem_key text;
