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

use redis::Script;

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
