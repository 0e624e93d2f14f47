//! The Lua scripts (in `lua/`), each loaded once per Redis and run with EVALSHA (redis-rs
//! falls back to loading it when Redis answers NOSCRIPT, as after a restart). The room scripts
//! share the epoch prologue of `lua/epoch.lua`. Each script touches the keys of one slot only
//! (a room's, the `{nodes}`', or one node's registry), so it runs on a Redis Cluster too.
//!
//! Every script begins with the `#!lua` shebang (Redis 7): a read-only replica then refuses
//! it with READONLY instead of running it. Without it Redis runs a script on a replica until
//! it tries to write, so a node still connected to a demoted primary would read a stale
//! position or page, and never learn that it must follow the new primary.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// A script made of the shebang and the named files of `lua/`, in order.
macro_rules! script {
    ($($file:literal),+) => {
        concat!("#!lua\n", $(include_str!(concat!("lua/", $file))),+)
    };
}

/// Every script this broker runs.
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) position: Script,
    pub(crate) history: Script,
    pub(crate) presence_add: Script,
    pub(crate) presence_remove: Script,
    pub(crate) heartbeat: Script,
    pub(crate) claim: Script,
    pub(crate) swept: Script,
    pub(crate) erase: Script,
}

/// Compiled (hashed) once per process.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    publish: Script::new(script!("epoch.lua", "publish.lua")),
    position: Script::new(script!("epoch.lua", "position.lua")),
    history: Script::new(script!("epoch.lua", "history.lua")),
    presence_add: Script::new(script!("presence_add.lua")),
    presence_remove: Script::new(script!("presence_remove.lua")),
    heartbeat: Script::new(script!("heartbeat.lua")),
    claim: Script::new(script!("claim.lua")),
    swept: Script::new(script!("swept.lua")),
    erase: Script::new(script!("erase.lua")),
});

/// A call of one script being put together, keys and arguments (as redis-rs's
/// `ScriptInvocation`, which cannot go out as one command of a pipeline: see
/// `Shared::room_eval`'s `WAIT`).
pub(crate) struct Call<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<'a> Call<'a> {
    /// A call of `script` with no keys and no arguments yet.
    pub(crate) fn new(script: &'a Script) -> Self {
        Call { script, keys: Vec::new(), args: Vec::new() }
    }

    /// Adds a key.
    pub(crate) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument.
    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// The call as a command: `EVALSHA`, the script's hash, the keys and the arguments.
    pub(crate) fn cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(self.keys.len());
        for part in self.keys.iter().chain(&self.args) {
            cmd.arg(part.as_slice());
        }
        cmd
    }

    /// Loads the script (on a cluster, into every node).
    pub(crate) async fn load(&self, conn: &mut impl ConnectionLike) -> RedisResult<()> {
        self.script.load_async(conn).await.map(drop)
    }

    /// Runs the call; a Redis that does not have the script (`NOSCRIPT`: restarted, or a new
    /// shard) gets it loaded, and the call runs again.
    pub(crate) async fn invoke<T: FromRedisValue>(&self, conn: &mut impl ConnectionLike) -> RedisResult<T> {
        let cmd = self.cmd();
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load(conn).await?;
                cmd.query_async(conn).await
            }
            answer => answer,
        }
    }
}
