//! Publishing by batches: a node's publishes into one room are stored one batch at a time,
//! each batch one call of `lua/publish.lua`, and the publishes that arrive while a batch is in
//! flight make the next one (group commit).
//!
//! Why: a publish script call costs Redis its fixed part (the call, the epoch prologue, the
//! room's expiries, trimming, the channel message) once per batch rather than once per message,
//! and costs the node one request, one reply and one pub/sub message per batch. A lone publisher
//! sees no difference (its batch is itself, sent at once); many publishers into one room, or one
//! session with several sends in flight, share the round trips. Batches of different rooms run
//! side by side, pipelined on the node's publishing connection.
//!
//! Order: one batch per room at a time, messages in the order their publishes arrived, so a
//! room's messages from this node are stored in that order, and a script refused with ORIGIN
//! (the room must go on from the store) runs again before anything later of the room is tried.
//!
//! The batch runs in a task of its own, not in any caller's: a caller that gives up (its
//! session closed) cannot strand the publishes queued behind it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chat_core::broker::{Epoch, Publication, PublishOpts, Published};
use chat_core::{BrokerError, RoomName};
use tokio::sync::oneshot;

use crate::node::{lock, Shared};

/// The most messages one script call stores.
const MAX_BATCH: usize = 64;
/// The most body bytes one script call carries (a batch holds at least one message, whatever
/// its size).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// A publish waiting for its batch.
pub(crate) struct Pending {
    pub(crate) msg: Publication,
    pub(crate) opts: PublishOpts,
    reply: oneshot::Sender<Result<Published, BrokerError>>,
}

/// The rooms with a batch in flight, and the publishes waiting behind it. A room is present
/// exactly while its task runs.
#[derive(Default)]
pub(crate) struct Queues {
    rooms: HashMap<RoomName, VecDeque<Pending>>,
}

/// Publishes `msg` into `room` with the next batch of the room, and waits for the outcome.
pub(crate) async fn publish(
    shared: &Arc<Shared>,
    room: &RoomName,
    msg: Publication,
    opts: &PublishOpts,
) -> Result<Published, BrokerError> {
    let (reply, outcome) = oneshot::channel();
    let pending = Pending { msg, opts: opts.clone(), reply };
    let start = {
        let mut queues = lock(&shared.outgoing);
        match queues.rooms.get_mut(room) {
            Some(queue) => {
                queue.push_back(pending);
                false
            }
            None => {
                queues.rooms.insert(room.clone(), VecDeque::from([pending]));
                true
            }
        }
    };
    if start {
        tokio::spawn(run(shared.clone(), room.clone()));
    }
    // The task answers every publish it takes, also when Redis fails (within the op timeout).
    outcome.await.unwrap_or_else(|_| Err(BrokerError::Internal("the publishing task ended".into())))
}

/// Stores the room's queued publishes batch after batch until none is left.
async fn run(shared: Arc<Shared>, room: RoomName) {
    loop {
        let batch = {
            let mut queues = lock(&shared.outgoing);
            let Some(queue) = queues.rooms.get_mut(&room) else { return };
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(next) = queue.front() {
                let size = next.msg.body.len();
                if !batch.is_empty() && (batch.len() == MAX_BATCH || bytes + size > MAX_BATCH_BYTES) {
                    break;
                }
                bytes += size;
                batch.extend(queue.pop_front());
            }
            if batch.is_empty() {
                queues.rooms.remove(&room);
                return;
            }
            batch
        };
        let outcomes = shared.store_batch(&room, &batch).await;
        match outcomes {
            Ok(outcomes) => {
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// What the script answered for one message of a batch, before the node records it.
pub(crate) struct Stored {
    pub(crate) published: Published,
    /// The message's id (see `Track::last_id`), `None` for a duplicate.
    pub(crate) id: Option<u64>,
}

/// Reads the script's answer for a batch of `n`: the epoch, then (seq, duplicate, id) each.
pub(crate) fn outcomes(answer: redis::Value, n: usize) -> Option<Vec<Stored>> {
    let items = crate::reply::array(answer)?;
    let mut items = items.into_iter();
    let epoch = Epoch::from(crate::reply::string(items.next()?)?);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (seq, dup, id) = (items.next()?, items.next()?, items.next()?);
        let seq = crate::reply::uint(&seq)?;
        let duplicate = crate::reply::uint(&dup)? == 1;
        let id = if duplicate { None } else { Some(crate::reply::uint(&id)?) };
        out.push(Stored { published: Published { epoch: epoch.clone(), seq, duplicate }, id });
    }
    items.next().is_none().then_some(out)
}
