//! The Lua scripts of the Redis scaler, one file each beside this one (their header comments
//! say what they do, their keys and their arguments). Each runs atomically in Redis: a channel's
//! epoch, seq and stream change together.

use std::sync::LazyLock;

use ::redis::Script;

/// Every script's start: reads the channel's epoch, or creates it (see `epoch.lua`).
const EPOCH_LUA: &str = include_str!("epoch.lua");
const PUBLISH_LUA: &str = include_str!("publish.lua");
const POSITION_LUA: &str = include_str!("position.lua");
const HISTORY_LUA: &str = include_str!("history.lua");
const SEED_LUA: &str = include_str!("seed.lua");
const RESTART_LUA: &str = include_str!("restart.lua");
const PRESENCE_UPDATE_LUA: &str = include_str!("presence_update.lua");
const PRESENCE_REFRESH_LUA: &str = include_str!("presence_refresh.lua");
const PRESENCE_SWEEP_LUA: &str = include_str!("presence_sweep.lua");
const PRESENCE_LUA: &str = include_str!("presence.lua");

/// A script that starts with [`EPOCH_LUA`], answering `unseeded` on a channel without state.
fn with_epoch(body: &str, unseeded: &str) -> Script {
    Script::new(&format!(
        "{}{body}",
        EPOCH_LUA.replace("UNSEEDED", unseeded)
    ))
}

/// `publish.lua` after `epoch.lua`.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| with_epoch(PUBLISH_LUA, "{'', 0}"));
/// `position.lua` after `epoch.lua`.
pub(super) static POSITION: LazyLock<Script> =
    LazyLock::new(|| with_epoch(POSITION_LUA, "{'', 0}"));
/// `history.lua` after `epoch.lua`.
pub(super) static HISTORY: LazyLock<Script> =
    LazyLock::new(|| with_epoch(HISTORY_LUA, "{'', 0, 0, {}}"));
/// `seed.lua`.
pub(super) static SEED: LazyLock<Script> = LazyLock::new(|| Script::new(SEED_LUA));
/// `restart.lua`.
pub(super) static RESTART: LazyLock<Script> = LazyLock::new(|| Script::new(RESTART_LUA));
/// `presence_update.lua`.
pub(super) static PRESENCE_UPDATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(PRESENCE_UPDATE_LUA));
/// `presence_refresh.lua`.
pub(super) static PRESENCE_REFRESH: LazyLock<Script> =
    LazyLock::new(|| Script::new(PRESENCE_REFRESH_LUA));
/// `presence_sweep.lua`.
pub(super) static PRESENCE_SWEEP: LazyLock<Script> =
    LazyLock::new(|| Script::new(PRESENCE_SWEEP_LUA));
/// `presence.lua`.
pub(super) static PRESENCE: LazyLock<Script> = LazyLock::new(|| Script::new(PRESENCE_LUA));
