//! The Lua scripts (in `lua/`), each loaded once per Redis and run with EVALSHA (redis-rs
//! falls back to loading it when Redis answers NOSCRIPT, as after a restart). The room scripts
//! share the epoch prologue of `lua/epoch.lua`.

use std::sync::LazyLock;

use redis::Script;

/// Every script this broker runs.
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) position: Script,
    pub(crate) history: Script,
    pub(crate) presence_add: Script,
    pub(crate) presence_remove: Script,
    pub(crate) heartbeat: Script,
    pub(crate) sweep: Script,
}

/// Compiled (hashed) once per process.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    publish: Script::new(concat!(include_str!("lua/epoch.lua"), include_str!("lua/publish.lua"))),
    position: Script::new(concat!(include_str!("lua/epoch.lua"), include_str!("lua/position.lua"))),
    history: Script::new(concat!(include_str!("lua/epoch.lua"), include_str!("lua/history.lua"))),
    presence_add: Script::new(include_str!("lua/presence_add.lua")),
    presence_remove: Script::new(include_str!("lua/presence_remove.lua")),
    heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
    sweep: Script::new(include_str!("lua/sweep.lua")),
});
